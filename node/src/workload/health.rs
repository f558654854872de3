//! Health checks of running replicas: one [`probe`] (HTTP GET or TCP connect) and the pure
//! [`HealthTracker`] that turns a series of probe results into a [`ContainerHealth`].
//!
//! The tracker takes results as input and never probes or sleeps itself, so when to probe
//! and how results flow into gossip stay the agent's decision.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use proto::ContainerHealth;
use tokio::net::TcpStream;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Healthy,
    /// Why, for logs: a connection error, a timeout or the HTTP status.
    Unhealthy(String),
}

impl ProbeResult {
    pub fn is_healthy(&self) -> bool {
        matches!(self, ProbeResult::Healthy)
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeResult::Healthy => f.write_str("healthy"),
            ProbeResult::Unhealthy(reason) => write!(f, "unhealthy: {reason}"),
        }
    }
}

/// Probes `addr` once, within `timeout` (connect and answer together).
///
/// With a `path`, sends `GET path` over HTTP/1.1 and is healthy on a 2xx or 3xx status
/// (a redirect means the app is up and routing); the body is not read. Without one, a
/// completed TCP connect is enough.
pub async fn probe(addr: SocketAddr, path: Option<&str>, timeout: Duration) -> ProbeResult {
    match tokio::time::timeout(timeout, probe_inner(addr, path)).await {
        Ok(Ok(())) => ProbeResult::Healthy,
        Ok(Err(reason)) => ProbeResult::Unhealthy(reason),
        Err(_) => ProbeResult::Unhealthy(format!("no answer within {timeout:?}")),
    }
}

async fn probe_inner(addr: SocketAddr, path: Option<&str>) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|err| format!("connect to {addr}: {err}"))?;
    let Some(path) = path else {
        return Ok(());
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("http handshake with {addr}: {err}"))?;
    let request = Request::get(path.as_str())
        .header(HOST, addr.to_string())
        .header(USER_AGENT, "stratus-health")
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("invalid health path {path:?}: {err}"))?;
    // The connection must be driven while the request waits. It may finish first even on
    // success (a server that answers and closes), in which case the answer is already
    // waiting for `send`. Dropping both closes the socket without reading the body.
    let send = sender.send_request(request);
    tokio::pin!(send);
    let response = tokio::select! {
        biased;
        response = &mut send => response,
        ended = connection => match ended {
            Ok(()) => send.await,
            Err(err) => return Err(format!("GET {path} on {addr}: {err}")),
        },
    }
    .map_err(|err| format!("GET {path} on {addr}: {err}"))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path} on {addr} answered {status}"))
    }
}

/// Turns probe results into a health state: healthy after one success, unhealthy after
/// `unhealthy_after` consecutive failures, unknown until either happens.
///
/// One success is enough because a fresh replica should take traffic as soon as it
/// answers; several failures are needed because one lost probe on a busy host should not
/// pull a replica out of every route table in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    unhealthy_after: u32,
    consecutive_failures: u32,
    health: ContainerHealth,
}

impl HealthTracker {
    pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;

    /// `unhealthy_after` is raised to 1 if given as 0.
    pub fn new(unhealthy_after: u32) -> HealthTracker {
        HealthTracker {
            unhealthy_after: unhealthy_after.max(1),
            consecutive_failures: 0,
            health: ContainerHealth::Unknown,
        }
    }

    pub fn health(&self) -> ContainerHealth {
        self.health
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Feeds one probe result; returns the new health if it changed, so the caller gossips
    /// only changes.
    #[must_use = "a changed health must be published"]
    pub fn observe(&mut self, healthy: bool) -> Option<ContainerHealth> {
        let before = self.health;
        if healthy {
            self.consecutive_failures = 0;
            self.health = ContainerHealth::Healthy;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= self.unhealthy_after {
                self.health = ContainerHealth::Unhealthy;
            }
        }
        (self.health != before).then_some(self.health)
    }
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker::new(HealthTracker::DEFAULT_UNHEALTHY_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn healthy_after_one_success_unhealthy_after_three_failures() {
        let mut tracker = HealthTracker::default();
        assert_eq!(tracker.health(), ContainerHealth::Unknown);
        assert_eq!(
            tracker.observe(false),
            None,
            "one failure of a new replica: still unknown"
        );
        assert_eq!(tracker.observe(true), Some(ContainerHealth::Healthy));
        assert_eq!(tracker.observe(true), None);
        assert_eq!(tracker.observe(false), None);
        assert_eq!(tracker.observe(false), None);
        assert_eq!(tracker.consecutive_failures(), 2);
        assert_eq!(tracker.observe(false), Some(ContainerHealth::Unhealthy));
        assert_eq!(tracker.observe(false), None, "already unhealthy");
        assert_eq!(tracker.observe(true), Some(ContainerHealth::Healthy));
        assert_eq!(tracker.consecutive_failures(), 0);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut tracker = HealthTracker::new(2);
        let _ = tracker.observe(true);
        let _ = tracker.observe(false);
        let _ = tracker.observe(true);
        assert_eq!(tracker.observe(false), None);
        assert_eq!(tracker.observe(false), Some(ContainerHealth::Unhealthy));
        assert_eq!(
            HealthTracker::new(0).observe(false),
            Some(ContainerHealth::Unhealthy)
        );
    }

    /// Answers every connection with `response`, once per connection.
    async fn serve(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_accepts_2xx_and_3xx_only() {
        let timeout = Duration::from_secs(2);
        let ok = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!(
            probe(ok, Some("/healthz"), timeout).await,
            ProbeResult::Healthy
        );
        let redirect =
            serve("HTTP/1.1 302 Found\r\nlocation: /\r\ncontent-length: 0\r\n\r\n").await;
        assert!(probe(redirect, Some("healthz"), timeout).await.is_healthy());
        let broken = serve("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let result = probe(broken, Some("/healthz"), timeout).await;
        assert!(result.to_string().contains("503"), "{result}");
    }

    #[tokio::test]
    async fn tcp_probe_needs_a_listener() {
        let timeout = Duration::from_secs(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(probe(addr, None, timeout).await.is_healthy());
        drop(listener);
        assert!(!probe(addr, None, timeout).await.is_healthy());
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepted by the kernel's backlog, never answered.
        let result = probe(addr, Some("/"), Duration::from_millis(200)).await;
        assert!(result.to_string().contains("no answer"), "{result}");
        drop(listener);
    }
}
