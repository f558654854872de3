//! The Grafana dashboards in `contrib/grafana/` query only series the agent and the ingress
//! really export: every `stratus_*` name in a panel's query is checked against the pages
//! both render once each of their metrics has a sample.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::path::PathBuf;

use ingress::breaker::Transition;
use ingress::metrics::{RouteSummary, UpstreamError};
use ingress::{BreakerState, Metrics};
use node::metrics::{AgentMetrics, Scrape};
use proto::events::{Change, ReplicaRef};

/// The series names a page exports: each family, with a histogram's three series.
fn exported(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

fn agent_page() -> String {
    let metrics = AgentMetrics::new();
    let replica = ReplicaRef {
        app: "web".into(),
        release: 1,
        replica: 0,
        node: "n1".into(),
        id: "web-1-0".into(),
    };
    metrics.observe_events(
        "n1",
        &[
            Change::ReplicaStarted {
                replica: replica.clone(),
            },
            Change::BuildFinished {
                app: "web".into(),
                release: 1,
                node: "n1".into(),
                builder: "python".into(),
                duration_ms: 1000,
                cache: "miss".into(),
                error: None,
            },
        ],
    );
    metrics.placement("admitted");
    metrics.reconciler_action("place");
    metrics.api_request("/v1/apps", "GET", 200, 0.001);
    metrics.render(&Scrape {
        members: vec![("live", 1)],
        dns: Some(node::dns::DnsStats {
            answers: vec![("udp", "NOERROR".to_string(), 1)],
            truncated: 1,
            dropped: vec![("malformed", 1)],
            ..Default::default()
        }),
        ..Scrape::default()
    })
}

fn ingress_page() -> String {
    let metrics = Metrics::new();
    metrics.app("web").observe(200, 0.01);
    metrics.upstream_error("web", UpstreamError::Connect);
    metrics.retry("web");
    metrics.breaker_transition(
        "web",
        Transition {
            from: BreakerState::Closed,
            to: BreakerState::Open,
        },
    );
    metrics.set_routes(RouteSummary::default());
    String::from_utf8(metrics.render()).unwrap()
}

/// Every `stratus_...` word in the dashboard's queries.
fn queried(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("stratus_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn every_series_a_dashboard_queries_is_one_the_agent_or_the_ingress_exports() {
    let contrib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana");
    for (file, page) in [
        ("stratus-agent.json", agent_page()),
        ("stratus-ingress.json", ingress_page()),
    ] {
        let text = std::fs::read_to_string(contrib.join(file)).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        let exported = exported(&page);
        let queried = queried(&dashboard);
        assert!(
            queried.len() >= 5,
            "{file} queries almost nothing: {queried:?}"
        );
        let unknown: Vec<_> = queried.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries series nobody exports: {unknown:?}\nexported: {exported:?}"
        );
    }
}
