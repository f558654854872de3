//! The Pingora driver: serves HTTP with the decisions of [`crate::routes`],
//! [`crate::balancer`] and [`crate::retry`].
//!
//! Per request: `request_filter` looks the Host and path up in the current route table
//! (unknown → 404, no routable replica → 503 with `Retry-After`; with scoped callers, a
//! client address no [`Callers`] knows → 403 and an app beyond the caller's tenant → the
//! same 404 as an unknown one) and refuses a declared
//! body over the limit (413); `request_body_filter` counts the body as it streams and
//! stops it with 413 once it passes the limit (chunked bodies, HTTP/2 data frames);
//! `upstream_peer` picks a backend (excluding those already tried) and reports the previous
//! attempt's outcome first when it is called again for a retry; `fail_to_connect` and
//! `error_while_proxy` judge the failed attempt (the backend's fault, a stale pooled
//! connection, or the client's) and ask [`retry::decide`]; `logging` reports the last
//! attempt, counts the request in [`Metrics`] and writes one access-log line. Every pick
//! thus gets exactly one `on_end`.
//!
//! Balancer calls happen under a `parking_lot` mutex held for a few balancer steps, never
//! across an `.await` (its guard is not `Send`, so the compiler checks) nor while logging;
//! the synchronous error hooks only record the failure in the context.
//!
//! This is the hot path: per request it looks up the route once, keeps the app's entry
//! (balancer and pre-resolved metric handles) and the Host and request id as shared
//! `HeaderValue`s, and allocates as little as Pingora lets it. `testbed bench ingress`
//! measures it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::time::Instant;

use crate::balancer::{Balancer, BalancerConfig, BreakerEvent, Outcome};
use crate::breaker::BreakerState;
use crate::callers::{self, Caller, Callers};
use crate::metrics::{AppMetrics, Metrics, RouteSummary, UpstreamError};
use crate::retry::{self, Attempt, Failure, RetryDecision, Timeouts};
use crate::routes::{BackendId, Lookup, RouteTable};

/// The request id header: kept when the client sent one, generated otherwise, sent to the
/// backend and back to the client.
pub const REQUEST_ID: &str = "x-request-id";

// The names of the fields the proxy adds, made once: inserting by a `HeaderName` does not
// parse (and, for these non-standard names, allocate) the name again on every request.
static REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The answer to a client a scoped proxy does not serve.
const FORBIDDEN_PAGE: &str = "<!doctype html><title>403 Forbidden</title>\
    <h1>Forbidden</h1><p>This balancer serves the containers of this node only.</p>\n";

/// Seconds a client is told to wait when an app has no routable replica.
pub const RETRY_AFTER_SECS: u32 = 5;

/// The default request body limit: 10 MiB, ten times nginx's 1 MiB `client_max_body_size`
/// (apps here take form posts and JSON, rarely uploads; those can raise it).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 << 20;

/// What a request needs of its app: the balancer and the metric handles.
struct AppEntry {
    name: String,
    balancer: Mutex<Balancer>,
    metrics: AppMetrics,
}

/// One published routing state: a table and an entry per app of it.
struct Snapshot {
    table: Arc<RouteTable>,
    apps: HashMap<String, Arc<AppEntry>>,
}

/// The routes the proxy reads, swapped in whole by [`RouteState::update`]. Balancer state
/// (latency, outstanding requests, breaker) survives updates for backends that stay.
pub struct RouteState {
    config: BalancerConfig,
    current: ArcSwap<Snapshot>,
    /// Where apps' metric handles come from.
    metrics: Arc<Metrics>,
    /// Serializes updates, so two concurrent ones cannot drop each other's balancers.
    updating: Mutex<()>,
    /// Who may call which app; `None`: anyone may call any app (the public ingress).
    callers: Option<Arc<dyn Callers>>,
}

impl RouteState {
    /// Routes whose requests are counted in a registry of their own; the ingress's server
    /// gives its proxy the registry of [`RouteState::metrics`].
    pub fn new(config: BalancerConfig) -> RouteState {
        RouteState::with_metrics(config, Arc::new(Metrics::new()))
    }

    pub fn with_metrics(config: BalancerConfig, metrics: Arc<Metrics>) -> RouteState {
        RouteState {
            config,
            current: ArcSwap::from_pointee(Snapshot {
                table: Arc::new(RouteTable::default()),
                apps: HashMap::new(),
            }),
            metrics,
            updating: Mutex::new(()),
            callers: None,
        }
    }

    /// The same routes, each client told apart by `callers` and kept to its tenant's apps:
    /// the node-local balancer's.
    pub fn scoped_by(mut self, callers: Arc<dyn Callers>) -> RouteState {
        self.callers = Some(callers);
        self
    }

    /// The registry the requests of these routes are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Publishes `table`: apps that stay keep their balancer (updated with the new
    /// backends), new apps get a fresh one, gone apps lose theirs.
    pub async fn update(&self, table: RouteTable) {
        let _serial = self.updating.lock();
        let old = self.current.load_full();
        let mut apps = HashMap::with_capacity(table.len());
        for (app, backends) in table.apps() {
            let entry = match old.apps.get(app) {
                Some(existing) => {
                    existing.balancer.lock().update(backends);
                    existing.clone()
                }
                None => Arc::new(AppEntry {
                    name: app.to_string(),
                    balancer: Mutex::new(Balancer::new(self.config, backends)),
                    metrics: self.metrics.app(app),
                }),
            };
            apps.insert(app.to_string(), entry);
        }
        self.current.store(Arc::new(Snapshot {
            table: Arc::new(table),
            apps,
        }));
    }

    /// The table in use.
    pub fn table(&self) -> Arc<RouteTable> {
        self.current.load().table.clone()
    }

    /// The balancer of `app`, to inspect its state (tests, metrics).
    pub async fn with_balancer<T>(&self, app: &str, f: impl FnOnce(&Balancer) -> T) -> Option<T> {
        let entry = self.current.load().apps.get(app)?.clone();
        let guard = entry.balancer.lock();
        Some(f(&guard))
    }

    /// The table's size and the breakers not closed at `now`, for metrics. Moves breakers
    /// whose backoff ended to HalfOpen first (reporting those transitions to the routes'
    /// metrics), so an idle app's breaker does not read as open forever.
    pub async fn summary(&self, now: Instant) -> RouteSummary {
        let snapshot = self.current.load_full();
        let mut summary = RouteSummary {
            apps: snapshot.table.len(),
            ..RouteSummary::default()
        };
        for (app, entry) in &snapshot.apps {
            let events = {
                let mut guard = entry.balancer.lock();
                guard.handle_timeout(now);
                summary.backends += guard.len();
                for stats in guard.stats(now) {
                    match stats.breaker {
                        BreakerState::Open => summary.open_breakers += 1,
                        BreakerState::HalfOpen => summary.half_open_breakers += 1,
                        BreakerState::Closed => {}
                    }
                }
                take_events(&mut guard)
            };
            report_events(app, events, &self.metrics);
        }
        summary
    }
}

/// Takes the balancer's pending breaker transitions, to report once its lock is released
/// (logging may wait for the log writer). Allocates only when there is one.
fn take_events(balancer: &mut Balancer) -> Vec<BreakerEvent> {
    std::iter::from_fn(|| balancer.poll_event()).collect()
}

/// Logs and counts breaker transitions.
fn report_events(app: &str, events: Vec<BreakerEvent>, metrics: &Metrics) {
    for event in events {
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
    /// The app the request is for, once known.
    app: Option<Arc<AppEntry>>,
    current: Option<InFlight>,
    tried: Vec<BackendId>,
    retries: u32,
    stale_retries: u32,
    /// Shared with the request's headers: cloning it copies no bytes.
    request_id: HeaderValue,
    /// The Host header (or HTTP/2 `:authority`), empty if none.
    host: HeaderValue,
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
    /// A proxy of `routes`, counting requests in their registry.
    pub fn new(routes: Arc<RouteState>, config: ProxyConfig) -> Proxy {
        let metrics = routes.metrics().clone();
        Proxy {
            routes,
            config,
            metrics,
        }
    }

    fn app_label(ctx: &RequestCtx) -> &str {
        ctx.app
            .as_ref()
            .map_or(crate::metrics::NO_APP, |app| app.name.as_str())
    }

    /// Marks the attempt in flight as failed with `outcome` for its backend.
    fn mark_failed(ctx: &mut RequestCtx, outcome: Outcome) {
        if let Some(current) = ctx.current.as_mut() {
            current.failed = Some(outcome);
        }
    }

    /// Reports the attempt in flight, if any, to its balancer.
    fn end_attempt(&self, ctx: &mut RequestCtx, outcome: Outcome) {
        let (Some(attempt), Some(app)) = (ctx.current.take(), ctx.app.as_ref()) else {
            return;
        };
        let now = Instant::now();
        let events = {
            let mut guard = app.balancer.lock();
            guard.on_end(
                &attempt.backend,
                now,
                now.saturating_duration_since(attempt.started),
                outcome,
            );
            take_events(&mut guard)
        };
        report_events(&app.name, events, &self.metrics);
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
        .get(http::header::CONTENT_LENGTH)?
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

/// The Host header if it is text, else the HTTP/2 `:authority`; empty if neither.
fn request_host(header: &RequestHeader) -> HeaderValue {
    if let Some(host) = header
        .headers
        .get(http::header::HOST)
        .filter(|host| host.to_str().is_ok())
    {
        return host.clone();
    }
    header
        .uri
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

/// The client's request id if it sent a usable one, a new random one otherwise.
fn request_id(header: &RequestHeader) -> HeaderValue {
    header
        .headers
        .get(&REQUEST_ID_NAME)
        .filter(|value| !value.is_empty() && value.len() <= 200 && value.to_str().is_ok())
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// 128 random bits as 32 lowercase hex digits.
fn new_request_id() -> HeaderValue {
    // Into a stack buffer: no allocation per request.
    let mut digits = [0u8; 32];
    if hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut digits).is_err() {
        return HeaderValue::from_static("-");
    }
    HeaderValue::from_bytes(&digits).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A duration in milliseconds to the whole microsecond, written as `f64`'s `Debug` writes
/// `micros / 1000.0` (`2.877`, `3.0`, `0.05`) without formatting a float per request.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        let (whole, fraction) = (micros / 1000, micros % 1000);
        let digits = [
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ];
        // Trailing zeros dropped, one digit kept: 3.0, 2.5, 0.05.
        let len = if digits[2] != b'0' {
            3
        } else if digits[1] != b'0' {
            2
        } else {
            1
        };
        write!(f, "{whole}.")?;
        f.write_str(std::str::from_utf8(&digits[..len]).unwrap_or("0"))
    }
}

/// `ip` as a header value. An IPv4 address is written digit by digit into a stack buffer:
/// `Display` for `IpAddr` goes through `fmt` octet by octet (about 1.3k instructions per
/// request by callgrind, a fifth of what the forwarded headers cost).
fn ip_header_value(
    ip: std::net::IpAddr,
) -> std::result::Result<HeaderValue, http::header::InvalidHeaderValue> {
    let std::net::IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string());
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len])
}

/// A header value for logs: its text, or `-` if it is not visible ASCII.
fn header_text(value: &HeaderValue) -> &str {
    value.to_str().unwrap_or("-")
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            app: None,
            current: None,
            tried: Vec::new(),
            retries: 0,
            stale_retries: 0,
            request_id: HeaderValue::from_static(""),
            host: HeaderValue::from_static(""),
            tls: false,
            body_bytes: 0,
            too_large: false,
        }
    }

    // Pingora's default adds a response compression module that stays disabled: we never
    // compress, and each request would still build and poll its per-request context.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    // One header map on the copy sent to the replica instead of two (values and original
    // case): each forwarded header costs one map insertion, not two. Replicas get standard
    // names title-cased and others in lower case, as from HAProxy; names are
    // case-insensitive (RFC 9110 section 5.1).
    fn preserve_upstream_header_case(&self, _session: &Session, _ctx: &RequestCtx) -> bool {
        false
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let caller = match &self.routes.callers {
            None => Caller::Anyone,
            Some(callers) => match session.client_addr().and_then(|addr| addr.as_inet()) {
                Some(client) => callers.caller(client.ip()),
                None => Caller::Stranger,
            },
        };
        if caller == Caller::Stranger {
            respond_page(session, 403, FORBIDDEN_PAGE, None).await?;
            return Ok(true);
        }
        let header = session.req_header();
        ctx.request_id = request_id(header);
        ctx.host = request_host(header);
        ctx.tls = session
            .digest()
            .is_some_and(|digest| digest.ssl_digest.is_some());
        let routable = {
            let snapshot = self.routes.current.load();
            let (app, routable) = match snapshot
                .table
                .lookup(header_text(&ctx.host), header.uri.path())
            {
                Lookup::Unknown => (None, false),
                Lookup::NoBackend { app } => (Some(app), false),
                Lookup::Backends { app, .. } => (Some(app), true),
            };
            // Another tenant's app is as unknown as an absent one.
            let app = app.filter(|app| {
                caller == Caller::Anyone
                    || snapshot
                        .table
                        .owner(app)
                        .is_some_and(|owner| callers::may_reach(&caller, owner))
            });
            ctx.app = app.and_then(|app| snapshot.apps.get(app).cloned());
            routable
        };
        if ctx.app.is_none() {
            respond_page(session, 404, &self.config.not_found_page, None).await?;
            return Ok(true);
        }
        if !routable {
            respond_page(
                session,
                503,
                &self.config.unavailable_page,
                Some(RETRY_AFTER_SECS),
            )
            .await?;
            return Ok(true);
        }
        if content_length(session.req_header())
            .is_some_and(|length| length > self.config.max_body_bytes)
        {
            ctx.too_large = true;
            respond_page(session, 413, &self.too_large_page(), None).await?;
            return Ok(true);
        }
        Ok(false)
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
        self.end_attempt(ctx, outcome);
        let Some(app) = ctx.app.as_ref() else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no balancer for the app");
        };
        let now = Instant::now();
        let (backend, addr, pool_group) = {
            let mut guard = app.balancer.lock();
            let Some(backend) = guard.start(now, &mut rand::rng(), &ctx.tried) else {
                return Error::e_explain(ErrorType::HTTPStatus(503), "no available backend");
            };
            (
                backend.group_key.clone(),
                backend.addr,
                backend.pool_group(),
            )
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
        // The replica's answer on one header map instead of two (values and original case);
        // clients get standard names title-cased and others in lower case, as from HAProxy.
        peer.options.discard_h1_response_header_case = true;
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
            let ip = client.ip();
            let forwarded = match upstream
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
            {
                Some(previous) if !previous.trim().is_empty() => {
                    HeaderValue::try_from(format!("{previous}, {ip}"))
                }
                _ => ip_header_value(ip),
            }
            .or_else(|_| Error::e_explain(ErrorType::InvalidHTTPHeader, "x-forwarded-for"))?;
            upstream.insert_header_name(X_FORWARDED_FOR.clone(), forwarded)?;
        }
        upstream.insert_header_name(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
        )?;
        if !ctx.host.is_empty() {
            upstream.insert_header_name(X_FORWARDED_HOST.clone(), ctx.host.clone())?;
        }
        upstream.insert_header_name(REQUEST_ID_NAME.clone(), ctx.request_id.clone())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream.insert_header_name(REQUEST_ID_NAME.clone(), ctx.request_id.clone())?;
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
        let backend = ctx.current.as_ref().map(|attempt| attempt.backend.clone());
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
        self.end_attempt(ctx, outcome);
        let duration: Duration = Instant::now().saturating_duration_since(ctx.started);
        ctx.app
            .as_ref()
            .map_or(self.metrics.no_app(), |app| &app.metrics)
            .observe(status, duration.as_secs_f64());
        let header = session.req_header();
        // Field values are only computed when the access log is on.
        tracing::info!(
            target: "ingress::access",
            app = ctx.app.as_ref().map_or("-", |app| app.name.as_str()),
            backend = backend.as_ref().map_or("-", BackendId::as_str),
            status,
            // Whole microseconds, so the line reads 2.877, not 2.8774759999999997.
            duration_ms = %Millis(duration),
            retries = ctx.retries,
            method = %header.method,
            tls = ctx.tls,
            http2 = session.is_http2(),
            host = %header_text(&ctx.host),
            path = %header.uri.path(),
            request_id = %header_text(&ctx.request_id),
            error = e.map(|error| error.to_string()),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_read_as_display_writes_them() {
        let addrs = [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.99.100",
            "127.0.252.1",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
        ];
        for text in addrs {
            let ip: std::net::IpAddr = text.parse().unwrap_or_else(|_| panic!("{text}"));
            assert_eq!(
                ip_header_value(ip).ok(),
                HeaderValue::from_str(text).ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn durations_in_the_access_log_read_as_the_float_did() {
        for micros in [
            0u64,
            1,
            10,
            50,
            999,
            1000,
            2877,
            3000,
            12_340,
            1_000_001,
            86_400_000_000,
        ] {
            let duration = Duration::from_micros(micros);
            let float = format!("{:?}", micros as f64 / 1000.0);
            assert_eq!(Millis(duration).to_string(), float, "{micros} µs");
        }
    }

    #[test]
    fn new_request_ids_are_32_lowercase_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        for id in [&a, &b] {
            let text = id.to_str().unwrap_or_default();
            assert_eq!(text.len(), 32, "{text}");
            assert!(
                text.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            );
        }
        assert_ne!(a, b);
    }
}
