//! The agent's Prometheus metrics (`GET /metrics`, text format), apart from the ingress's:
//! a registry per agent, so agents in one process (tests) never mix their counts.
//!
//! Two kinds of series. Counters of things this node does are fed where they happen: the
//! events feed counts this node's replicas' starts, restarts, crashes and health failures
//! and its finished builds; the placement admission, the reconciler driver and the API
//! layer count theirs. Gauges of state (members by status, catalog sizes, stream
//! subscribers) and the gossip transport's totals are read at each scrape from their
//! owners, so they cannot drift from them.
//!
//! Labels are bounded: kinds and reasons are fixed words, API routes are the router's
//! templates (`/v1/apps/{app}`), never an app or tenant name, so the page is public.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use proto::api::GossipStats;
use proto::events::Change;

/// Build-duration buckets in seconds: a cached static site to a cold dependency install.
const BUILD_BUCKETS: &[f64] = &[1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0];

/// API-duration buckets in seconds: a local read to an upload.
const API_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// What a scrape reads from the agent's state.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Members by status (`live`, `dead`...), as this node's view has them.
    pub members: Vec<(&'static str, i64)>,
    pub gossip: GossipStats,
    pub apps: i64,
    pub releases: i64,
    pub tenants: i64,
    pub tokens: i64,
    pub event_subscribers: i64,
    /// `None`: this node answers no DNS.
    pub dns: Option<crate::dns::DnsStats>,
}

pub struct AgentMetrics {
    registry: Registry,
    members: IntGaugeVec,
    gossip_datagrams: IntCounterVec,
    gossip_bytes: IntCounterVec,
    gossip_dropped: IntCounterVec,
    gossip_round_trips: IntCounter,
    gossip_round_seconds: prometheus::Counter,
    catalog_records: IntGaugeVec,
    catalog_releases: IntGauge,
    placements: IntCounterVec,
    reconciler_actions: IntCounterVec,
    replica_events: IntCounterVec,
    builds: IntCounterVec,
    build_seconds: Histogram,
    api_requests: HistogramVec,
    event_subscribers: IntGauge,
    events: IntCounterVec,
    dns_answers: IntCounterVec,
    dns_dropped: IntCounterVec,
    dns_other: IntCounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let registry =
            Registry::new_custom(Some("stratus_agent".to_string()), None).expect("valid prefix");
        let r = &registry;
        let build_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "build_duration_seconds",
                "Builds this node ran, by how long they took",
            )
            .buckets(BUILD_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_seconds.clone()))
            .expect("registered once");
        let api_requests = HistogramVec::new(
            HistogramOpts::new(
                "api_request_duration_seconds",
                "API requests this node answered, by route template, method and status",
            )
            .buckets(API_BUCKETS.to_vec()),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(api_requests.clone()))
            .expect("registered once");
        AgentMetrics {
            members: gauge_vec(
                r,
                "gossip_members",
                "Cluster members by status, as this node sees them",
                &["status"],
            ),
            gossip_datagrams: counter_vec(
                r,
                "gossip_datagrams_total",
                "Gossip datagrams sent and received",
                &["direction"],
            ),
            gossip_bytes: counter_vec(
                r,
                "gossip_bytes_total",
                "Gossip bytes sent and received",
                &["direction"],
            ),
            gossip_dropped: counter_vec(
                r,
                "gossip_datagrams_dropped_total",
                "Gossip datagrams dropped, by cause",
                &["cause"],
            ),
            gossip_round_trips: {
                let counter = IntCounter::new(
                    "gossip_round_trips_total",
                    "Gossip rounds this node started that a peer answered (SYN to SYN-ACK)",
                )
                .expect("valid metric");
                r.register(Box::new(counter.clone()))
                    .expect("registered once");
                counter
            },
            gossip_round_seconds: {
                let counter = prometheus::Counter::new(
                    "gossip_round_trip_seconds_total",
                    "Total time of those rounds: divided by gossip_round_trips_total, the mean round time",
                )
                .expect("valid metric");
                r.register(Box::new(counter.clone()))
                    .expect("registered once");
                counter
            },
            catalog_records: gauge_vec(
                r,
                "catalog_records",
                "Records of the catalog this node holds, by kind",
                &["kind"],
            ),
            catalog_releases: gauge(
                r,
                "catalog_releases",
                "Releases of the live apps this node holds",
            ),
            placements: counter_vec(
                r,
                "placements_total",
                "Replica placements asked of this node, by outcome (admitted, or the refusal's reason)",
                &["outcome"],
            ),
            reconciler_actions: counter_vec(
                r,
                "reconciler_actions_total",
                "Actions this node's reconcilers took, by kind",
                &["kind"],
            ),
            replica_events: counter_vec(
                r,
                "replica_events_total",
                "What happened to this node's replicas: started, restarted, crashed, unhealthy, stopped",
                &["kind"],
            ),
            builds: counter_vec(
                r,
                "builds_total",
                "Builds this node ran, by result and dependency cache use",
                &["result", "cache"],
            ),
            build_seconds,
            api_requests,
            event_subscribers: gauge(
                r,
                "event_subscribers",
                "Readers following this node's event stream",
            ),
            events: counter_vec(
                r,
                "events_total",
                "Events this node recorded, by kind",
                &["kind"],
            ),
            dns_answers: counter_vec(
                r,
                "dns_answers_total",
                "DNS answers sent, by transport and response code",
                &["transport", "rcode"],
            ),
            dns_dropped: counter_vec(
                r,
                "dns_packets_dropped_total",
                "DNS packets dropped or answered only FORMERR, by cause (malformed, not_a_query)",
                &["cause"],
            ),
            dns_other: counter_vec(
                r,
                "dns_events_total",
                "DNS answers truncated (TC, then TCP), questions forwarded to the recursor and \
                 left unanswered by it, TCP connections refused over the limit",
                &["kind"],
            ),
            registry,
        }
    }

    /// A placement asked of this node: `admitted`, `already_admitted`, or why refused.
    pub fn placement(&self, outcome: &str) {
        self.placements.with_label_values(&[outcome]).inc();
    }

    pub fn reconciler_action(&self, kind: &str) {
        self.reconciler_actions.with_label_values(&[kind]).inc();
    }

    /// Counts the events this node just recorded, and what they say of its own replicas and
    /// builds (`self_id`).
    pub fn observe_events(&self, self_id: &str, changes: &[Change]) {
        for change in changes {
            self.events.with_label_values(&[change.kind()]).inc();
            let replica_kind = match change {
                Change::ReplicaStarted { replica } if replica.node == self_id => Some("started"),
                Change::ReplicaRestarted { replica } if replica.node == self_id => {
                    Some("restarted")
                }
                Change::ReplicaCrashed { replica, .. } if replica.node == self_id => {
                    Some("crashed")
                }
                Change::ReplicaUnhealthy { replica, .. } if replica.node == self_id => {
                    Some("unhealthy")
                }
                Change::ReplicaStopped { replica, .. } if replica.node == self_id => {
                    Some("stopped")
                }
                _ => None,
            };
            if let Some(kind) = replica_kind {
                self.replica_events.with_label_values(&[kind]).inc();
            }
            if let Change::BuildFinished {
                node,
                duration_ms,
                error,
                cache,
                ..
            } = change
                && node == self_id
            {
                let result = if error.is_none() { "ok" } else { "failed" };
                self.builds.with_label_values(&[result, cache]).inc();
                #[allow(clippy::cast_precision_loss)] // ms of a build fit an f64 exactly
                self.build_seconds.observe(*duration_ms as f64 / 1000.0);
            }
        }
    }

    /// One API request answered: `route` is the router's template.
    pub fn api_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.api_requests
            .with_label_values(&[route, method, &status.to_string()])
            .observe(seconds);
    }

    /// The page, with the state gauges and transport totals set from `scrape`.
    pub fn render(&self, scrape: &Scrape) -> String {
        self.members.reset();
        for (status, count) in &scrape.members {
            self.members.with_label_values(&[status]).set(*count);
        }
        let stats = &scrape.gossip;
        if let Some(dns) = &scrape.dns {
            for (transport, rcode, count) in &dns.answers {
                catch_up(&self.dns_answers, &[transport, rcode], *count);
            }
            for (cause, count) in &dns.dropped {
                catch_up(&self.dns_dropped, &[cause], *count);
            }
            for (kind, count) in [
                ("truncated", dns.truncated),
                ("forwarded", dns.forwarded),
                ("forward_failed", dns.forward_failures),
                ("tcp_refused", dns.tcp_refused),
            ] {
                catch_up(&self.dns_other, &[kind], count);
            }
        }
        catch_up(&self.gossip_datagrams, &["sent"], stats.datagrams_sent);
        catch_up(
            &self.gossip_datagrams,
            &["received"],
            stats.datagrams_received,
        );
        catch_up(&self.gossip_bytes, &["sent"], stats.bytes_sent);
        catch_up(&self.gossip_bytes, &["received"], stats.bytes_received);
        catch_up(
            &self.gossip_dropped,
            &["unauthenticated"],
            stats.dropped_unauthenticated,
        );
        catch_up(
            &self.gossip_dropped,
            &["malformed"],
            stats.dropped_malformed,
        );
        catch_up(&self.gossip_dropped, &["oversize"], stats.dropped_oversize);
        let seen = self.gossip_round_trips.get();
        if stats.round_trips > seen {
            self.gossip_round_trips.inc_by(stats.round_trips - seen);
        }
        let total = stats.round_trip_micros_total as f64 / 1e6;
        let seen = self.gossip_round_seconds.get();
        if total > seen {
            self.gossip_round_seconds.inc_by(total - seen);
        }
        for (kind, count) in [
            ("app", scrape.apps),
            ("tenant", scrape.tenants),
            ("token", scrape.tokens),
        ] {
            self.catalog_records.with_label_values(&[kind]).set(count);
        }
        self.catalog_releases.set(scrape.releases);
        self.event_subscribers.set(scrape.event_subscribers);
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# cannot encode the metrics: {err}\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Moves a counter up to a total its owner keeps (the transport's atomics only grow).
fn catch_up(counter: &IntCounterVec, labels: &[&str], total: u64) {
    let counter: IntCounter = counter.with_label_values(labels);
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

#[cfg(test)]
mod tests {
    use proto::events::ReplicaRef;

    use super::*;

    fn replica(node: &str) -> ReplicaRef {
        ReplicaRef {
            app: "web".into(),
            release: 1,
            replica: 0,
            node: node.into(),
            id: "web-1-0".into(),
        }
    }

    #[test]
    fn this_nodes_replicas_and_builds_are_counted_from_its_events() {
        let metrics = AgentMetrics::new();
        metrics.observe_events(
            "n1",
            &[
                Change::ReplicaStarted {
                    replica: replica("n1"),
                },
                Change::ReplicaStarted {
                    replica: replica("n2"),
                },
                Change::ReplicaCrashed {
                    replica: replica("n1"),
                    reason: "exit 1".into(),
                },
                Change::BuildFinished {
                    app: "web".into(),
                    release: 1,
                    node: "n1".into(),
                    builder: "python".into(),
                    duration_ms: 12_000,
                    error: None,
                    cache: "hit".into(),
                },
            ],
        );
        metrics.placement("no_room");
        metrics.reconciler_action("place");
        metrics.api_request("/v1/apps/{app}", "GET", 200, 0.002);
        let page = metrics.render(&Scrape {
            members: vec![("live", 3), ("dead", 1)],
            gossip: GossipStats {
                bytes_sent: 500,
                dropped_unauthenticated: 2,
                round_trips: 4,
                round_trip_micros_total: 2_000_000,
                ..GossipStats::default()
            },
            apps: 4,
            dns: Some(crate::dns::DnsStats {
                answers: vec![("udp", "NXDOMAIN".into(), 3)],
                truncated: 1,
                dropped: vec![("malformed", 7)],
                ..Default::default()
            }),
            ..Scrape::default()
        });
        for line in [
            r#"stratus_agent_replica_events_total{kind="started"} 1"#,
            r#"stratus_agent_replica_events_total{kind="crashed"} 1"#,
            r#"stratus_agent_events_total{kind="replica.started"} 2"#,
            r#"stratus_agent_builds_total{cache="hit",result="ok"} 1"#,
            "stratus_agent_build_duration_seconds_sum 12",
            r#"stratus_agent_placements_total{outcome="no_room"} 1"#,
            r#"stratus_agent_reconciler_actions_total{kind="place"} 1"#,
            r#"stratus_agent_api_request_duration_seconds_count{method="GET",route="/v1/apps/{app}",status="200"} 1"#,
            r#"stratus_agent_gossip_members{status="live"} 3"#,
            r#"stratus_agent_gossip_bytes_total{direction="sent"} 500"#,
            r#"stratus_agent_gossip_datagrams_dropped_total{cause="unauthenticated"} 2"#,
            r#"stratus_agent_catalog_records{kind="app"} 4"#,
            "stratus_agent_gossip_round_trips_total 4",
            "stratus_agent_gossip_round_trip_seconds_total 2",
            r#"stratus_agent_dns_answers_total{rcode="NXDOMAIN",transport="udp"} 3"#,
            r#"stratus_agent_dns_events_total{kind="truncated"} 1"#,
            r#"stratus_agent_dns_packets_dropped_total{cause="malformed"} 7"#,
        ] {
            assert!(page.contains(line), "{line} missing from:\n{page}");
        }
        // A second scrape moves the transport's counters to the new totals, not by them.
        let page = metrics.render(&Scrape {
            gossip: GossipStats {
                bytes_sent: 800,
                ..GossipStats::default()
            },
            ..Scrape::default()
        });
        assert!(page.contains(r#"stratus_agent_gossip_bytes_total{direction="sent"} 800"#));
        assert!(
            !page.contains(r#"status="dead""#),
            "members are set afresh: {page}"
        );
    }
}
