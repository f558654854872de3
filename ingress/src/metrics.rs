//! The ingress's Prometheus metrics, in a registry of its own per route state, so one per
//! ingress (several may run in one process, e.g. in tests, and must not mix their counts),
//! rendered in the Prometheus text format by the admin service of [`crate::server`]. An
//! app's request series exist, at zero, from when it enters the route table ([`AppMetrics`]
//! are resolved then); error and retry series appear with their first count.
//!
//! Counters are fed by the proxy as requests end; the route-table and breaker gauges are
//! set from the route state at each scrape, so they can never drift from it.
//!
//! Label values are bounded: `app` is an app name of the route table or [`NO_APP`],
//! `class` one of `1xx`..`5xx` or `none`, `kind` one of [`UpstreamError`]'s names, and
//! breaker states are the three of [`BreakerState`].

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::breaker::{BreakerState, Transition};

/// The `app` label of requests that matched no app (unknown host or path). App names are
/// lowercase letters, digits and dashes, so this never names a real app.
pub const NO_APP: &str = "_none";

/// Request-duration buckets in seconds: from a fast loopback answer to the read timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Why talking to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamError {
    /// No connection: refused, unreachable.
    Connect,
    /// A connect, read or write timed out.
    Timeout,
    /// The exchange broke after it started: reset, closed early, malformed answer.
    Broken,
    /// A pooled keep-alive connection had been closed by the backend (sent again on a
    /// fresh one; not the backend's fault).
    Stale,
}

impl UpstreamError {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Broken => "broken",
            UpstreamError::Stale => "stale",
        }
    }
}

/// The label of a breaker state.
pub fn state_label(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

/// Every `class` label, in the order of [`class_index`].
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The index in [`CLASSES`] of a response status's class; `none` when no answer was sent
/// (the client went away first).
fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// The `class` label of a response status: `2xx` etc., `none` when no answer was sent
/// (the client went away first).
pub fn status_class(status: u16) -> &'static str {
    CLASSES[class_index(status)]
}

/// One app's request counters and latency histogram, looked up once (when the app enters
/// the route table) so that a request costs an atomic increment, not a label lookup under
/// the registry's lock.
#[derive(Clone)]
pub struct AppMetrics {
    requests: [IntCounter; 6],
    duration: Histogram,
}

impl AppMetrics {
    /// A request ended with `status` (0: no answer sent) after `seconds`.
    pub fn observe(&self, status: u16, seconds: f64) {
        self.requests[class_index(status)].inc();
        self.duration.observe(seconds);
    }
}

fn app_metrics(requests: &IntCounterVec, duration: &HistogramVec, app: &str) -> AppMetrics {
    AppMetrics {
        requests: CLASSES.map(|class| requests.with_label_values(&[app, class])),
        duration: duration.with_label_values(&[app]),
    }
}

/// What the route table held at a scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteSummary {
    pub apps: usize,
    pub backends: usize,
    pub open_breakers: usize,
    pub half_open_breakers: usize,
}

/// One ingress's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    retries: IntCounterVec,
    breaker_transitions: IntCounterVec,
    breakers: IntGaugeVec,
    route_apps: IntGauge,
    route_backends: IntGauge,
    /// Requests that matched no app.
    no_app: AppMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("stratus_ingress".to_string()), None)
            .expect("a constant, valid prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by app and status class",
            ),
            &["app", "class"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from the request head to the end of the answer, by app",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["app"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Failed attempts to talk to a backend, by app and kind (connect, timeout, broken, stale)",
            ),
            &["app", "kind"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new("retries_total", "Requests tried again on another backend"),
            &["app"],
        )
        .expect("valid metric");
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "breaker_transitions_total",
                "Circuit breaker state changes, by app and from/to state",
            ),
            &["app", "from", "to"],
        )
        .expect("valid metric");
        let breakers = IntGaugeVec::new(
            Opts::new(
                "breakers",
                "Backends whose breaker is not closed, by state (open, half_open)",
            ),
            &["state"],
        )
        .expect("valid metric");
        let route_apps = IntGauge::new("route_apps", "Apps in the route table").expect("valid");
        let route_backends = IntGauge::new(
            "route_backends",
            "Routable backends (healthy replicas) in the route table",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(retries.clone()),
            Box::new(breaker_transitions.clone()),
            Box::new(breakers.clone()),
            Box::new(route_apps.clone()),
            Box::new(route_backends.clone()),
        ] {
            registry
                .register(collector)
                .expect("distinct metric names in a fresh registry");
        }
        let no_app = app_metrics(&requests, &duration, NO_APP);
        Metrics {
            registry,
            no_app,
            requests,
            duration,
            upstream_errors,
            retries,
            breaker_transitions,
            breakers,
            route_apps,
            route_backends,
        }
    }

    /// The request metrics of `app`. Its series exist from now on, at zero.
    pub fn app(&self, app: &str) -> AppMetrics {
        app_metrics(&self.requests, &self.duration, app)
    }

    /// The request metrics of requests that matched no app ([`NO_APP`]).
    pub fn no_app(&self) -> &AppMetrics {
        &self.no_app
    }

    pub fn upstream_error(&self, app: &str, kind: UpstreamError) {
        self.upstream_errors
            .with_label_values(&[app, kind.as_str()])
            .inc();
    }

    pub fn retry(&self, app: &str) {
        self.retries.with_label_values(&[app]).inc();
    }

    pub fn breaker_transition(&self, app: &str, transition: Transition) {
        self.breaker_transitions
            .with_label_values(&[
                app,
                state_label(transition.from),
                state_label(transition.to),
            ])
            .inc();
    }

    /// Sets the route-table and breaker gauges.
    pub fn set_routes(&self, summary: RouteSummary) {
        self.route_apps.set(gauge(summary.apps));
        self.route_backends.set(gauge(summary.backends));
        self.breakers
            .with_label_values(&["open"])
            .set(gauge(summary.open_breakers));
        self.breakers
            .with_label_values(&["half_open"])
            .set(gauge(summary.half_open_breakers));
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            // Only a collector with inconsistent labels fails here: a bug, not an input.
            tracing::error!(%error, "cannot encode the metrics");
        }
        out
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(metrics: &Metrics) -> String {
        String::from_utf8(metrics.render()).unwrap_or_default()
    }

    #[test]
    fn counts_requests_by_app_and_class() {
        let metrics = Metrics::new();
        let web = metrics.app("web");
        web.observe(200, 0.002);
        web.observe(204, 0.002);
        web.observe(503, 0.002);
        metrics.no_app().observe(404, 0.0001);
        web.observe(0, 0.1);
        let text = text(&metrics);
        assert!(
            text.contains("stratus_ingress_requests_total{app=\"web\",class=\"2xx\"} 2"),
            "{text}"
        );
        assert!(text.contains("stratus_ingress_requests_total{app=\"web\",class=\"5xx\"} 1"));
        assert!(text.contains("stratus_ingress_requests_total{app=\"web\",class=\"none\"} 1"));
        assert!(text.contains("stratus_ingress_requests_total{app=\"_none\",class=\"4xx\"} 1"));
        assert!(text.contains("stratus_ingress_request_duration_seconds_count{app=\"web\"} 4"));
        assert!(text.contains(
            "stratus_ingress_request_duration_seconds_bucket{app=\"web\",le=\"0.0025\"} 3"
        ));
    }

    #[test]
    fn registries_are_separate() {
        let one = Metrics::new();
        let two = Metrics::new();
        one.retry("web");
        assert!(text(&one).contains("stratus_ingress_retries_total{app=\"web\"} 1"));
        assert!(!text(&two).contains("retries_total{"));
    }

    #[test]
    fn breaker_and_route_gauges() {
        let metrics = Metrics::new();
        metrics.breaker_transition(
            "web",
            Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open,
            },
        );
        metrics.upstream_error("web", UpstreamError::Connect);
        metrics.set_routes(RouteSummary {
            apps: 2,
            backends: 5,
            open_breakers: 1,
            half_open_breakers: 0,
        });
        let text = text(&metrics);
        assert!(text.contains(
            "stratus_ingress_breaker_transitions_total{app=\"web\",from=\"closed\",to=\"open\"} 1"
        ));
        assert!(
            text.contains("stratus_ingress_upstream_errors_total{app=\"web\",kind=\"connect\"} 1")
        );
        assert!(text.contains("stratus_ingress_route_apps 2"));
        assert!(text.contains("stratus_ingress_route_backends 5"));
        assert!(text.contains("stratus_ingress_breakers{state=\"open\"} 1"));
        assert!(text.contains("stratus_ingress_breakers{state=\"half_open\"} 0"));
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(399), "3xx");
        assert_eq!(status_class(413), "4xx");
        assert_eq!(status_class(0), "none");
        assert_eq!(status_class(600), "none");
    }
}
