//! The Pingora server around [`crate::proxy::Proxy`]: built by [`build`] (or [`run`] for a
//! plain listener alone), started on a thread of its own (Pingora builds its own runtimes
//! and must not be started inside a tokio runtime), stopped through [`IngressHandle`].
//!
//! One Pingora server holds every listener of an ingress: plain HTTP (HTTP/1.1, and HTTP/2
//! with prior knowledge, "h2c"), TLS with a certificate per domain by SNI (HTTP/2 or
//! HTTP/1.1 by ALPN), and the admin port serving `/metrics`.
//!
//! Pingora defaults that do not suit us, set here: `threads` is 1 unless given; a graceful
//! stop sleeps `grace_period_seconds` (default 300 s), set to [`GRACE_PERIOD_SECS`]; the
//! Unix signal handlers are not installed, the caller decides when to stop. A listener
//! that cannot bind panics on Pingora's thread, so [`build`] tries every address first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;
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

/// A built, not yet started ingress.
pub struct Ingress {
    server: Server,
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
    let (server, metrics) = new_server(threads);
    let mut server = server;
    server.add_service(proxy_service(
        &server,
        &Listeners::http(listen),
        routes,
        config,
        &metrics,
        None,
    ));
    Ingress {
        server,
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
    let tls = match &listeners.tls {
        Some(tls) => Some(tls_settings(tls)?),
        None => None,
    };
    let (mut server, metrics) = new_server(threads);
    let proxy = proxy_service(&server, listeners, routes.clone(), config, &metrics, tls);
    server.add_service(proxy);
    if let Some(admin) = listeners.admin {
        let mut service = Service::new(
            "stratus ingress admin".to_string(),
            AdminApp {
                metrics: metrics.clone(),
                routes,
            },
        );
        service.add_tcp(&admin.to_string());
        server.add_service(service);
    }
    Ok(Ingress {
        server,
        listen: listeners.http,
        metrics,
    })
}

fn new_server(threads: usize) -> (Server, Arc<Metrics>) {
    let conf = ServerConf {
        threads: threads.max(1),
        grace_period_seconds: Some(GRACE_PERIOD_SECS),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    (server, Arc::new(Metrics::new()))
}

fn proxy_service(
    server: &Server,
    listeners: &Listeners,
    routes: Arc<RouteState>,
    config: ProxyConfig,
    metrics: &Arc<Metrics>,
    tls: Option<(SocketAddr, TlsSettings)>,
) -> Service<pingora_proxy::HttpProxy<Proxy>> {
    let mut options = HttpServerOptions::default();
    // HTTP/2 on the plain listener for clients that open with its preface; HTTP/1.1
    // clients are told apart by a peek and served as before.
    options.h2c = true;
    let mut service = pingora_proxy::ProxyServiceBuilder::new(
        &server.configuration,
        Proxy::new(routes, config, metrics.clone()),
    )
    .name("stratus ingress")
    .server_options(options)
    .build();
    service.add_tcp(&listeners.http.to_string());
    if let Some((addr, settings)) = tls {
        service.add_tls_with_settings(&addr.to_string(), None, settings);
    }
    service
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
    metrics: Arc<Metrics>,
    routes: Arc<RouteState>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, content_type, body) = if session.req_header().uri.path() == "/metrics" {
            let summary = self.routes.summary(Instant::now(), &self.metrics).await;
            self.metrics.set_routes(summary);
            (200, metrics::CONTENT_TYPE, self.metrics.render())
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

    /// This ingress's metrics (a registry of its own).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs the server on a new OS thread (never inside a tokio runtime). The listener is
    /// bound asynchronously: callers that need it wait until it accepts.
    pub fn spawn(self) -> std::io::Result<IngressHandle> {
        let (stop_tx, stop_rx) = watch::channel(None);
        let server = self.server;
        let thread = std::thread::Builder::new()
            .name("ingress".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(StopWatch(stop_rx)),
                });
            })?;
        Ok(IngressHandle {
            stop: stop_tx,
            thread: Some(thread),
            listen: self.listen,
            metrics: self.metrics,
        })
    }
}

/// A running ingress. Dropping it stops it fast.
pub struct IngressHandle {
    stop: watch::Sender<Option<Stop>>,
    thread: Option<JoinHandle<()>>,
    listen: SocketAddr,
    metrics: Arc<Metrics>,
}

impl IngressHandle {
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// This ingress's metrics (a registry of its own).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Stops the server and waits for its thread. Blocking: from async code, call it in
    /// `spawn_blocking`.
    pub fn stop(mut self, how: Stop) {
        self.stop_and_join(how);
    }

    fn stop_and_join(&mut self, how: Stop) {
        self.stop.send_replace(Some(how));
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the ingress server thread panicked");
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
