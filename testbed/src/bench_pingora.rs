//! `bench ingress`'s "pingora, no hooks" target: Pingora's proxy with nothing of ours but
//! the one hook it requires (`upstream_peer`, a fixed backend), on the ingress's thread
//! model (one single-threaded server per thread on `SO_REUSEPORT` sockets). It is the floor
//! of what any proxy built on `pingora-proxy` costs here: the ingress's distance to it is
//! ours, its distance to nginx and HAProxy is Pingora's.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora_core::listeners::TcpSocketOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

use crate::bench_ingress::BenchTls;

struct Bare {
    backend: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.backend, false, String::new())))
    }
}

/// Serves plain HTTP on `listen` and HTTPS on `tls`'s address if given (rustls, as the
/// ingress), until the process is killed (the bench sends SIGTERM).
pub fn serve(
    listen: SocketAddr,
    tls: Option<BenchTls>,
    backend: SocketAddr,
    threads: usize,
) -> anyhow::Result<()> {
    let mut running = Vec::new();
    for index in 0..threads.max(1) {
        let mut server = Server::new_with_opt_and_conf(
            None,
            ServerConf {
                threads: 1,
                // The bench stops it with SIGTERM: no 300 s graceful wait.
                grace_period_seconds: Some(0),
                graceful_shutdown_timeout_seconds: Some(0),
                ..ServerConf::default()
            },
        );
        server.bootstrap();
        let mut service =
            pingora_proxy::http_proxy_service(&server.configuration, Bare { backend });
        let mut socket = TcpSocketOptions::default();
        socket.so_reuseport = Some(true);
        service.add_tcp_with_settings(&listen.to_string(), socket.clone());
        if let Some(tls) = &tls {
            let settings = TlsSettings::intermediate(
                &tls.cert.display().to_string(),
                &tls.key.display().to_string(),
            )?;
            service.add_tls_with_settings(&tls.listen.to_string(), Some(socket), settings);
        }
        server.add_service(service);
        running.push(
            std::thread::Builder::new()
                .name(format!("pingora-{index}"))
                .spawn(move || server.run(RunArgs::default()))?,
        );
    }
    for thread in running {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a pingora server thread panicked"))?;
    }
    Ok(())
}
