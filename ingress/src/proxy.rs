//! The Pingora driver: serves HTTP with the decisions of [`crate::routes`],
//! [`crate::balancer`] and [`crate::retry`].
//!
//! Per request: `request_filter` looks the Host and path up in the current route table
//! (unknown → 404, no routable replica → 503 with `Retry-After`) and refuses a declared
//! body over the limit (413); `request_body_filter` counts the body as it streams and
//! stops it with 413 once it passes the limit (chunked bodies, HTTP/2 data frames);
//! `upstream_peer` picks a backend (excluding those already tried) and reports the previous
//! attempt's outcome first when it is called again for a retry; `fail_to_connect` and
//! `error_while_proxy` judge the failed attempt (the backend's fault, a stale pooled
//! connection, or the client's) and ask [`retry::decide`]; `logging` reports the last
//! attempt, counts the request in [`Metrics`] and writes one access-log line. Every pick
//! thus gets exactly one `on_end`.
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
use pingora_error::{Error, ErrorSource, ErrorType, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::balancer::{Balancer, BalancerConfig, Outcome};
use crate::breaker::BreakerState;
use crate::metrics::{Metrics, RouteSummary, UpstreamError};
use crate::retry::{self, Attempt, Failure, RetryDecision, Timeouts};
use crate::routes::{BackendId, Lookup, RouteTable};

/// The request id header: kept when the client sent one, generated otherwise, sent to the
/// backend and back to the client.
pub const REQUEST_ID: &str = "x-request-id";

/// Seconds a client is told to wait when an app has no routable replica.
pub const RETRY_AFTER_SECS: u32 = 5;

/// The default request body limit: 10 MiB, ten times nginx's 1 MiB `client_max_body_size`
/// (apps here take form posts and JSON, rarely uploads; those can raise it).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 << 20;

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

    /// The table's size and the breakers not closed at `now`, for metrics. Moves breakers
    /// whose backoff ended to HalfOpen first (reporting those transitions to `metrics`), so
    /// an idle app's breaker does not read as open forever.
    pub async fn summary(&self, now: Instant, metrics: &Metrics) -> RouteSummary {
        let snapshot = self.current.load_full();
        let mut summary = RouteSummary {
            apps: snapshot.table.len(),
            ..RouteSummary::default()
        };
        for (app, balancer) in &snapshot.balancers {
            let mut guard = balancer.lock().await;
            guard.handle_timeout(now);
            drain_events(app, &mut guard, metrics);
            summary.backends += guard.len();
            for stats in guard.stats(now) {
                match stats.breaker {
                    BreakerState::Open => summary.open_breakers += 1,
                    BreakerState::HalfOpen => summary.half_open_breakers += 1,
                    BreakerState::Closed => {}
                }
            }
        }
        summary
    }
}

/// Logs and counts the balancer's pending breaker transitions.
fn drain_events(app: &str, balancer: &mut Balancer, metrics: &Metrics) {
    while let Some(event) = balancer.poll_event() {
        tracing::info!(
            app,
            backend = %event.backend,
            from = ?event.transition.from,
            to = ?event.transition.to,
            "breaker transition"
        );
        metrics.breaker_transition(app, event.transition);
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
    /// Largest request body passed on, in bytes; a larger one gets 413 (whether declared
    /// by `Content-Length` or found out while streaming a chunked body).
    pub max_body_bytes: u64,
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
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The attempt in flight: its backend and when it started.
#[derive(Debug)]
struct InFlight {
    backend: BackendId,
    started: Instant,
    /// Set when the attempt failed: `Failure` if the backend is to blame, `Cancelled` if
    /// not (a stale pooled connection, the client, our own body limit).
    failed: Option<Outcome>,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    app: Option<String>,
    balancer: Option<SharedBalancer>,
    current: Option<InFlight>,
    tried: Vec<BackendId>,
    retries: u32,
    stale_retries: u32,
    request_id: String,
    host: String,
    /// The client connection is TLS.
    tls: bool,
    /// Request body bytes seen so far.
    body_bytes: u64,
    /// The body passed the limit: the answer is our 413.
    too_large: bool,
}

/// The [`ProxyHttp`] implementation.
pub struct Proxy {
    routes: Arc<RouteState>,
    config: ProxyConfig,
    metrics: Arc<Metrics>,
}

impl Proxy {
    pub fn new(routes: Arc<RouteState>, config: ProxyConfig, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            routes,
            config,
            metrics,
        }
    }

    fn app_label(ctx: &RequestCtx) -> &str {
        ctx.app.as_deref().unwrap_or(crate::metrics::NO_APP)
    }

    /// Marks the attempt in flight as failed with `outcome` for its backend.
    fn mark_failed(ctx: &mut RequestCtx, outcome: Outcome) {
        if let Some(current) = ctx.current.as_mut() {
            current.failed = Some(outcome);
        }
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
        drain_events(Self::app_label(ctx), &mut guard, &self.metrics);
    }

    /// Whether the failed attempt is retried; counts the retry.
    fn retry(&self, ctx: &mut RequestCtx, attempt: Attempt<'_>) -> bool {
        match retry::decide(&attempt, &self.config.timeouts, ctx.started, Instant::now()) {
            RetryDecision::RetryElsewhere => {
                ctx.retries += 1;
                self.metrics.retry(Self::app_label(ctx));
                true
            }
            RetryDecision::RetryFresh => {
                // The backend is not to blame: it may be picked again.
                ctx.stale_retries += 1;
                if let Some(current) = ctx.current.as_ref() {
                    ctx.tried.retain(|tried| *tried != current.backend);
                }
                true
            }
            RetryDecision::GiveUp(_) => false,
        }
    }

    fn too_large_page(&self) -> String {
        format!(
            "<!doctype html><title>413 Content Too Large</title>\
             <h1>Request body too large</h1><p>This ingress accepts request bodies of at \
             most {} bytes.</p>\n",
            self.config.max_body_bytes
        )
    }
}

/// The declared body length, if any and well-formed.
fn content_length(header: &RequestHeader) -> Option<u64> {
    header
        .headers
        .get("content-length")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn upstream_error_kind(error: &Error) -> UpstreamError {
    match error.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            UpstreamError::Timeout
        }
        _ => UpstreamError::Broken,
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
            stale_retries: 0,
            request_id: String::new(),
            host: String::new(),
            tls: false,
            body_bytes: 0,
            too_large: false,
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
        ctx.tls = session
            .digest()
            .is_some_and(|digest| digest.ssl_digest.is_some());
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
                if content_length(session.req_header())
                    .is_some_and(|length| length > self.config.max_body_bytes)
                {
                    ctx.too_large = true;
                    respond_page(session, 413, &self.too_large_page(), None).await?;
                    return Ok(true);
                }
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
        let outcome = ctx
            .current
            .as_ref()
            .and_then(|attempt| attempt.failed)
            .unwrap_or(Outcome::Failure);
        self.end_attempt(ctx, outcome).await;
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
            failed: None,
        });
        let timeouts = &self.config.timeouts;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.group_key = pool_group;
        let connect = timeouts.connect_for(ctx.started, now);
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        let read = timeouts.read_for(ctx.started, now);
        peer.options.read_timeout = Some(read);
        // A backend that stops reading the request body is as stuck as one that stops
        // answering.
        peer.options.write_timeout = Some(read);
        Ok(Box::new(peer))
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // After an upgrade (WebSocket) these are a stream's bytes, not a request body.
        if session.was_upgraded() {
            return Ok(());
        }
        if let Some(chunk) = body.as_ref() {
            ctx.body_bytes = ctx.body_bytes.saturating_add(chunk.len() as u64);
            if ctx.body_bytes > self.config.max_body_bytes {
                ctx.too_large = true;
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the ingress's limit",
                );
            }
        }
        Ok(())
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
        upstream.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
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
        Self::mark_failed(ctx, Outcome::Failure);
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => UpstreamError::Timeout,
            _ => UpstreamError::Connect,
        };
        self.metrics.upstream_error(Self::app_label(ctx), kind);
        let attempt = Attempt {
            method: session.req_header().method.as_str(),
            failure: Failure::Connect,
            retries: ctx.retries,
            stale_retries: ctx.stale_retries,
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
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        // Our own 413 (the body passed the limit) or the client's failure (gone, garbage):
        // no verdict on the backend, nothing to retry.
        if ctx.too_large || *e.esource() == ErrorSource::Downstream {
            Self::mark_failed(ctx, Outcome::Cancelled);
            e.set_retry(false);
            return e;
        }
        // Pingora marks the errors that a closed keep-alive connection produces (reset or
        // closed before any answer) as retryable if the connection was reused: then the
        // pooled connection was stale, and the backend is not to blame.
        let stale = client_reused && matches!(e.retry, RetryType::ReusedOnly);
        let app = Self::app_label(ctx).to_string();
        if stale {
            Self::mark_failed(ctx, Outcome::Cancelled);
            self.metrics.upstream_error(&app, UpstreamError::Stale);
        } else {
            Self::mark_failed(ctx, Outcome::Failure);
            self.metrics.upstream_error(&app, upstream_error_kind(&e));
        }
        let attempt = Attempt {
            method: session.req_header().method.as_str(),
            failure: if stale {
                Failure::StaleConnection
            } else {
                Failure::AfterSent
            },
            retries: ctx.retries,
            stale_retries: ctx.stale_retries,
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
            413 => respond_page(session, 413, &self.too_large_page(), None).await,
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
            (
                Some(InFlight {
                    failed: Some(outcome),
                    ..
                }),
                _,
            ) => *outcome,
            _ if ctx.too_large => Outcome::Cancelled,
            (_, Some(error)) if *error.esource() == ErrorSource::Downstream => Outcome::Cancelled,
            (_, Some(_)) if status == 0 => Outcome::Failure,
            _ => Outcome::from_status(status),
        };
        self.end_attempt(ctx, outcome).await;
        let duration: Duration = Instant::now().saturating_duration_since(ctx.started);
        self.metrics
            .observe_request(ctx.app.as_deref(), status, duration.as_secs_f64());
        let header = session.req_header();
        tracing::info!(
            target: "ingress::access",
            app = ctx.app.as_deref().unwrap_or("-"),
            backend = backend.as_deref().unwrap_or("-"),
            status,
            duration_ms = duration.as_secs_f64() * 1000.0,
            retries = ctx.retries,
            method = %header.method,
            tls = ctx.tls,
            http2 = session.is_http2(),
            host = %ctx.host,
            path = %header.uri.path(),
            request_id = %ctx.request_id,
            error = e.map(|error| error.to_string()),
            "request"
        );
    }
}
