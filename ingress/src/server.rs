//! The Pingora server around [`crate::proxy::Proxy`]: built by [`run`], started on a
//! thread of its own (Pingora builds its own runtimes and must not be started inside a
//! tokio runtime), stopped through [`IngressHandle`].
//!
//! Pingora defaults that do not suit us, set here: `threads` is 1 unless given, and each
//! thread serves on its own (see [`run`]); a graceful stop sleeps `grace_period_seconds`
//! (default 300 s), set to [`GRACE_PERIOD_SECS`]; the Unix signal handlers are not
//! installed, the caller decides when to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use pingora_core::listeners::TcpSocketOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use crate::proxy::{Proxy, ProxyConfig, RouteState};

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

/// A built, not yet started ingress.
pub struct Ingress {
    server: Server,
    listen: SocketAddr,
}

/// Builds the Pingora server that proxies `listen` with the routes of `routes`, on
/// `threads` worker threads (at least 1). Start it with [`Ingress::spawn`].
///
/// Each thread is a service of its own with one thread, its own upstream connection pool
/// and its own listening socket on `listen` (`SO_REUSEPORT`: the kernel spreads incoming
/// connections over them), as nginx's workers are. One service on several threads shares
/// one pool and one work-stealing scheduler: pooled connections and the tasks that watch
/// them move between threads, at the price of cross-thread wake-ups (and without work
/// stealing the pool loses connections to a race, pingora issue 998). Measured with
/// `testbed bench ingress` on 2 threads: 6 to 10 µs less CPU per request, 9 to 13% more
/// requests/s. With port 0, each thread would get a port of its own, so there is only one
/// thread then. The price of `SO_REUSEPORT`: a second ingress started by the same user on
/// the same address shares the port instead of failing to bind.
pub fn run(
    listen: SocketAddr,
    routes: Arc<RouteState>,
    config: ProxyConfig,
    threads: usize,
) -> Ingress {
    let threads = if listen.port() == 0 {
        1
    } else {
        threads.max(1)
    };
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(GRACE_PERIOD_SECS),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    for _ in 0..threads {
        let mut service = pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            Proxy::new(routes.clone(), config.clone()),
            "stratus ingress",
        );
        let mut socket = TcpSocketOptions::default();
        socket.so_reuseport = Some(threads > 1);
        service.add_tcp_with_settings(&listen.to_string(), socket);
        service.threads = Some(1);
        server.add_service(service);
    }
    Ingress { server, listen }
}

impl Ingress {
    pub fn listen(&self) -> SocketAddr {
        self.listen
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
        })
    }
}

/// A running ingress. Dropping it stops it fast.
pub struct IngressHandle {
    stop: watch::Sender<Option<Stop>>,
    thread: Option<JoinHandle<()>>,
    listen: SocketAddr,
}

impl IngressHandle {
    pub fn listen(&self) -> SocketAddr {
        self.listen
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
