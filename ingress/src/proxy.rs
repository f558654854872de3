//! The Pingora driver: serves HTTP with the decisions of [`crate::routes`],
//! [`crate::balancer`] and [`crate::retry`].
//!
//! Per request: `request_filter` looks the Host and path up in the current route table
//! (unknown → 404, no routable replica → 503 with `Retry-After`); `upstream_peer` picks a
//! backend (excluding those already tried) and reports the previous attempt's failure
//! first when it is called again for a retry; `fail_to_connect` and `error_while_proxy`
//! mark the attempt failed and ask [`retry::decide`]; `logging` reports the last attempt and
//! writes one access-log line. Every pick thus gets exactly one `on_end`.
//!
//! All balancer calls happen in the `async` hooks under a `tokio` mutex held for
//! microseconds; the synchronous error hooks only record the failure in the context.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::balancer::{Balancer, BalancerConfig, Outcome};
use crate::retry::{self, Attempt, Failure, RetryDecision, Timeouts};
use crate::routes::{BackendId, Lookup, RouteTable};

/// The request id header: kept when the client sent one, generated otherwise, sent to the
/// backend and back to the client.
pub const REQUEST_ID: &str = "x-request-id";

/// Seconds a client is told to wait when an app has no routable replica.
pub const RETRY_AFTER_SECS: u32 = 5;

type SharedBalancer = Arc<Mutex<Balancer>>;

/// One published routing state: a table and a balancer per app of it.
struct Snapshot {
    table: Arc<RouteTable>,
    balancers: HashMap<String, SharedBalancer>,
}

/// The routes the proxy reads, swapped in whole by [`RouteState::update`]. Balancer state
/// (latency, outstanding requests, breaker) survives updates for backends that stay.
pub struct RouteState {
    config: BalancerConfig,
    current: ArcSwap<Snapshot>,
    /// Serializes updates, so two concurrent ones cannot drop each other's balancers.
    updating: Mutex<()>,
}

impl RouteState {
    pub fn new(config: BalancerConfig) -> RouteState {
        RouteState {
            config,
            current: ArcSwap::from_pointee(Snapshot {
                table: Arc::new(RouteTable::default()),
                balancers: HashMap::new(),
            }),
            updating: Mutex::new(()),
        }
    }

    /// Publishes `table`: apps that stay keep their balancer (updated with the new
    /// backends), new apps get a fresh one, gone apps lose theirs.
    pub async fn update(&self, table: RouteTable) {
        let _serial = self.updating.lock().await;
        let old = self.current.load_full();
        let mut balancers = HashMap::with_capacity(table.len());
        for (app, backends) in table.apps() {
            let balancer = match old.balancers.get(app) {
                Some(existing) => {
                    existing.lock().await.update(backends);
                    existing.clone()
                }
                None => Arc::new(Mutex::new(Balancer::new(self.config, backends))),
            };
            balancers.insert(app.to_string(), balancer);
        }
        self.current.store(Arc::new(Snapshot {
            table: Arc::new(table),
            balancers,
        }));
    }

    /// The table in use.
    pub fn table(&self) -> Arc<RouteTable> {
        self.current.load().table.clone()
    }

    /// The balancer of `app`, to inspect its state (tests, metrics).
    pub async fn with_balancer<T>(&self, app: &str, f: impl FnOnce(&Balancer) -> T) -> Option<T> {
        let balancer = self.current.load().balancers.get(app)?.clone();
        let guard = balancer.lock().await;
        Some(f(&guard))
    }
}

/// How the proxy answers on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub timeouts: Timeouts,
    /// HTML body of the 503 answer when an app has no routable replica.
    pub unavailable_page: String,
    /// HTML body of the 404 answer for an unknown host or path.
    pub not_found_page: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            timeouts: Timeouts::default(),
            unavailable_page: "<!doctype html><title>503 Service Unavailable</title>\
                <h1>Service unavailable</h1><p>This app has no running replica right now. \
                Try again in a few seconds.</p>\n"
                .to_string(),
            not_found_page: "<!doctype html><title>404 Not Found</title>\
                <h1>Not found</h1><p>No app answers on this address.</p>\n"
                .to_string(),
        }
    }
}

/// The attempt in flight: its backend and when it started.
#[derive(Debug)]
struct InFlight {
    backend: BackendId,
    started: Instant,
    failed: bool,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    app: Option<String>,
    balancer: Option<SharedBalancer>,
    current: Option<InFlight>,
    tried: Vec<BackendId>,
    retries: u32,
    request_id: String,
    host: String,
}

/// The [`ProxyHttp`] implementation.
pub struct Proxy {
    routes: Arc<RouteState>,
    config: ProxyConfig,
}

impl Proxy {
    pub fn new(routes: Arc<RouteState>, config: ProxyConfig) -> Proxy {
        Proxy { routes, config }
    }

    /// Reports the attempt in flight, if any, to its balancer.
    async fn end_attempt(&self, ctx: &mut RequestCtx, outcome: Outcome) {
        let (Some(attempt), Some(balancer)) = (ctx.current.take(), ctx.balancer.as_ref()) else {
            return;
        };
        let now = Instant::now();
        let mut guard = balancer.lock().await;
        guard.on_end(
            &attempt.backend,
            now,
            now.saturating_duration_since(attempt.started),
            outcome,
        );
        while let Some(event) = guard.poll_event() {
            tracing::info!(
                app = ctx.app.as_deref().unwrap_or("-"),
                backend = %event.backend,
                from = ?event.transition.from,
                to = ?event.transition.to,
                "breaker transition"
            );
        }
    }

    /// Whether the failed attempt is retried; counts the retry.
    fn retry(&self, ctx: &mut RequestCtx, attempt: Attempt<'_>) -> bool {
        let decision = retry::decide(&attempt, &self.config.timeouts, ctx.started, Instant::now());
        if decision == RetryDecision::RetryElsewhere {
            ctx.retries += 1;
            true
        } else {
            false
        }
    }
}

/// Sends a small HTML page with `status`; `retry_after` adds the header.
async fn respond_page(
    session: &mut Session,
    status: u16,
    body: &str,
    retry_after: Option<u32>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "text/html; charset=utf-8")?;
    resp.insert_header("cache-control", "no-store")?;
    resp.set_content_length(body.len())?;
    if let Some(seconds) = retry_after {
        resp.insert_header("retry-after", seconds.to_string())?;
    }
    session
        .write_error_response(resp, Bytes::copy_from_slice(body.as_bytes()))
        .await
}

fn request_host(header: &RequestHeader) -> String {
    header
        .headers
        .get("host")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
        .or_else(|| header.uri.authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default()
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            app: None,
            balancer: None,
            current: None,
            tried: Vec::new(),
            retries: 0,
            request_id: String::new(),
            host: String::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let header = session.req_header();
        ctx.request_id = header
            .headers
            .get(REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty() && value.len() <= 200)
            .map_or_else(new_request_id, str::to_string);
        ctx.host = request_host(header);
        let path = header.uri.path().to_string();
        let snapshot = self.routes.current.load();
        match snapshot.table.lookup(&ctx.host, &path) {
            Lookup::Unknown => {
                respond_page(session, 404, &self.config.not_found_page, None).await?;
                Ok(true)
            }
            Lookup::NoBackend { app } => {
                ctx.app = Some(app.to_string());
                respond_page(
                    session,
                    503,
                    &self.config.unavailable_page,
                    Some(RETRY_AFTER_SECS),
                )
                .await?;
                Ok(true)
            }
            Lookup::Backends { app, .. } => {
                ctx.app = Some(app.to_string());
                ctx.balancer = snapshot.balancers.get(app).cloned();
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Called again only for a retry: the attempt in flight failed.
        self.end_attempt(ctx, Outcome::Failure).await;
        let Some(balancer) = ctx.balancer.clone() else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no balancer for the app");
        };
        let now = Instant::now();
        let (backend, addr, pool_group) = {
            let mut guard = balancer.lock().await;
            let Some(id) = guard.pick(now, &mut rand::rng(), &ctx.tried) else {
                return Error::e_explain(ErrorType::HTTPStatus(503), "no available backend");
            };
            guard.on_start(&id);
            let Some(backend) = guard.backend(&id) else {
                return Error::e_explain(ErrorType::HTTPStatus(503), "picked backend vanished");
            };
            (id, backend.addr, backend.pool_group())
        };
        ctx.tried.push(backend.clone());
        ctx.current = Some(InFlight {
            backend,
            started: now,
            failed: false,
        });
        let timeouts = &self.config.timeouts;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.group_key = pool_group;
        let connect = timeouts.connect_for(ctx.started, now);
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = Some(timeouts.read_for(ctx.started, now));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = client.ip().to_string();
            let forwarded = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(previous) if !previous.trim().is_empty() => format!("{previous}, {ip}"),
                _ => ip,
            };
            upstream.insert_header("x-forwarded-for", forwarded)?;
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        if !ctx.host.is_empty() {
            upstream.insert_header("x-forwarded-host", ctx.host.clone())?;
        }
        upstream.insert_header(REQUEST_ID, ctx.request_id.clone())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream.insert_header(REQUEST_ID, ctx.request_id.clone())?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(current) = ctx.current.as_mut() {
            current.failed = true;
        }
        let attempt = Attempt {
            method: session.req_header().method.as_str(),
            failure: Failure::Connect,
            retries: ctx.retries,
            body_streamed: false,
            response_started: false,
        };
        let again = self.retry(ctx, attempt);
        e.set_retry(again);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        // The client left (or broke its side): the backend did nothing wrong, and nobody is
        // there to answer. `logging` reports the attempt as cancelled.
        if *e.esource() == ErrorSource::Downstream {
            e.set_retry(false);
            return e;
        }
        if let Some(current) = ctx.current.as_mut() {
            current.failed = true;
        }
        let attempt = Attempt {
            method: session.req_header().method.as_str(),
            failure: Failure::AfterSent,
            retries: ctx.retries,
            body_streamed: session.as_ref().retry_buffer_truncated(),
            response_started: session.response_written().is_some(),
        };
        let again = self.retry(ctx, attempt);
        e.set_retry(again);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        let written = match code {
            0 => Ok(()),
            503 => {
                respond_page(
                    session,
                    503,
                    &self.config.unavailable_page,
                    Some(RETRY_AFTER_SECS),
                )
                .await
            }
            _ => session.respond_error(code).await,
        };
        if let Err(error) = written {
            tracing::debug!(%error, "could not send the error answer");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        let backend = ctx
            .current
            .as_ref()
            .map(|attempt| attempt.backend.to_string());
        let outcome = match (&ctx.current, e) {
            (Some(attempt), _) if attempt.failed => Outcome::Failure,
            (_, Some(error)) if *error.esource() == ErrorSource::Downstream => Outcome::Cancelled,
            (_, Some(_)) if status == 0 => Outcome::Failure,
            _ => Outcome::from_status(status),
        };
        self.end_attempt(ctx, outcome).await;
        let duration: Duration = Instant::now().saturating_duration_since(ctx.started);
        let header = session.req_header();
        tracing::info!(
            target: "ingress::access",
            app = ctx.app.as_deref().unwrap_or("-"),
            backend = backend.as_deref().unwrap_or("-"),
            status,
            duration_ms = duration.as_secs_f64() * 1000.0,
            retries = ctx.retries,
            method = %header.method,
            host = %ctx.host,
            path = %header.uri.path(),
            request_id = %ctx.request_id,
            error = e.map(|error| error.to_string()),
            "request"
        );
    }
}
