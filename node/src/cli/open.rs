//! `stratus open APP`: which URL reaches an app, from its record and the cluster's nodes.

use std::net::SocketAddr;

use proto::api::{AppView, NodeStatus, NodesResponse};

/// The port `stratus ingress` listens on unless told otherwise.
pub const DEFAULT_INGRESS_PORT: u16 = 8080;

/// The URL to open, and what the user should know about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppUrl {
    pub app: String,
    pub url: String,
    /// The ingress it goes through, when a live node runs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<SocketAddr>,
    /// Why the URL may not answer, and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The ingress to go through: the answering node's own if it runs one (it is likely the
/// closest), else the first live node's that does.
pub fn pick_ingress(nodes: &NodesResponse) -> Option<SocketAddr> {
    let ingress_of = |node: &proto::api::NodeView| {
        (node.status == NodeStatus::Live)
            .then(|| node.identity.as_ref()?.ingress_addr)
            .flatten()
    };
    nodes
        .nodes
        .iter()
        .find(|node| node.node_id == nodes.self_id)
        .and_then(ingress_of)
        .or_else(|| nodes.nodes.iter().find_map(ingress_of))
}

/// The app's first domain if its release has any, else `APP.<base domain>`; on the
/// ingress's port (left out when it is 80).
pub fn app_url(view: &AppView, ingress: Option<SocketAddr>, base_domain: &str) -> AppUrl {
    let domain = view
        .release
        .as_ref()
        .and_then(|release| release.manifest.domains.first().cloned());
    let host = domain
        .clone()
        .unwrap_or_else(|| format!("{}.{}", view.name, base_domain.trim_matches('.')));
    let port = ingress.map_or(DEFAULT_INGRESS_PORT, |addr| addr.port());
    let url = if port == 80 {
        format!("http://{host}/")
    } else {
        format!("http://{host}:{port}/")
    };
    let note = match ingress {
        None => Some(format!(
            "no live node runs an ingress, so nothing answers this yet: start one with \
             `stratus ingress --seeds ...` (it listens on :{DEFAULT_INGRESS_PORT}) or give an \
             agent --ingress-addr"
        )),
        // *.localhost names this machine only; an ingress elsewhere needs a real domain.
        Some(addr)
            if domain.is_none()
                && base_domain.trim_matches('.') == "localhost"
                && !addr.ip().is_loopback()
                && !addr.ip().is_unspecified() =>
        {
            Some(format!(
                "{host} names this machine, but the ingress is at {addr}: run this where the \
                 ingress runs, or give the agents and this command a --base-domain whose \
                 names point at it"
            ))
        }
        Some(_) => None,
    };
    let note = note.or_else(|| {
        (view.release.is_none()).then(|| {
            format!(
                "{} has no release yet: deploy it (`stratus deploy`) and it answers here",
                view.name
            )
        })
    });
    AppUrl {
        app: view.name.clone(),
        url,
        ingress,
        note,
    }
}

/// The program that opens a URL in the user's browser, if the machine has one: `open` on
/// macOS, `xdg-open` elsewhere. `exists` says whether a program is on the PATH.
pub fn opener(macos: bool, exists: impl Fn(&str) -> bool) -> Option<&'static str> {
    let candidates: &[&'static str] = if macos { &["open"] } else { &["xdg-open"] };
    candidates.iter().copied().find(|program| exists(program))
}

#[cfg(test)]
mod tests {
    use proto::NodeIdentity;
    use proto::api::NodeView;

    use super::*;

    fn view(name: &str, domains: &[&str]) -> AppView {
        let manifest = proto::manifest::Manifest::parse(
            &format!(
                "name = \"{name}\"\ncmd = \"sh start.sh\"\ndomains = [{}]\n",
                domains
                    .iter()
                    .map(|domain| format!("\"{domain}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        )
        .unwrap();
        let release = proto::catalog::Release {
            number: 1,
            bundle: proto::catalog::BlobRef {
                sha256: "ab".repeat(32),
                size: 1,
            },
            manifest,
            created_at_ms: 0,
            created_on: "a".into(),
            note: None,
            image: None,
            config: None,
        };
        AppView {
            name: name.into(),
            replicas_desired: 1,
            release: Some(release),
            releases: vec![1],
            replicas: vec![],
            failure: None,
            failed_releases: Default::default(),
        }
    }

    fn node(id: &str, status: NodeStatus, ingress: Option<&str>) -> NodeView {
        NodeView {
            node_id: id.into(),
            generation: 1,
            gossip_addr: "127.0.0.1:7946".parse().unwrap(),
            status,
            identity: Some(NodeIdentity {
                node_id: id.into(),
                gossip_addr: "127.0.0.1:7946".parse().unwrap(),
                api_addr: "127.0.0.1:7070".parse().unwrap(),
                api_tls: false,
                ingress_addr: ingress.map(|addr| addr.parse().unwrap()),
                version: "test".into(),
                labels: Default::default(),
                started_at_ms: 0,
                runs_workloads: true,
                builds: false,
                gvisor: false,
            }),
            load: None,
            containers: 0,
            draining: false,
        }
    }

    #[test]
    fn the_first_domain_wins_and_port_80_is_left_out() {
        let app = view("web", &["www.example.com", "example.com"]);
        let url = app_url(&app, Some("0.0.0.0:80".parse().unwrap()), "localhost");
        assert_eq!(url.url, "http://www.example.com/");
        assert_eq!(url.note, None);
        let url = app_url(&app, Some("0.0.0.0:8080".parse().unwrap()), "localhost");
        assert_eq!(url.url, "http://www.example.com:8080/");
    }

    #[test]
    fn without_domains_the_app_answers_under_the_base_domain() {
        let app = view("web", &[]);
        let url = app_url(&app, Some("127.0.0.1:8080".parse().unwrap()), "localhost");
        assert_eq!(url.url, "http://web.localhost:8080/");
        assert_eq!(url.note, None);
        let url = app_url(
            &app,
            Some("10.0.0.5:80".parse().unwrap()),
            "apps.example.com.",
        );
        assert_eq!(url.url, "http://web.apps.example.com/");
        assert_eq!(url.note, None);
    }

    #[test]
    fn the_url_says_when_it_cannot_answer() {
        let app = view("web", &[]);
        let none = app_url(&app, None, "localhost");
        assert_eq!(none.url, "http://web.localhost:8080/");
        assert!(none.note.unwrap().contains("stratus ingress"));
        let far = app_url(&app, Some("10.0.0.5:8080".parse().unwrap()), "localhost");
        assert!(far.note.unwrap().contains("--base-domain"));
        let mut fresh = view("web", &[]);
        fresh.release = None;
        let fresh = app_url(&fresh, Some("127.0.0.1:8080".parse().unwrap()), "localhost");
        assert!(fresh.note.unwrap().contains("stratus deploy"));
    }

    #[test]
    fn the_answering_nodes_ingress_comes_first_then_any_live_one() {
        let nodes = |self_id: &str| NodesResponse {
            self_id: self_id.into(),
            nodes: vec![
                node("a", NodeStatus::Dead, Some("127.0.0.1:8081")),
                node("b", NodeStatus::Live, Some("127.0.0.1:8082")),
                node("c", NodeStatus::Live, Some("127.0.0.1:8083")),
                node("d", NodeStatus::Live, None),
            ],
        };
        assert_eq!(
            pick_ingress(&nodes("c")),
            Some("127.0.0.1:8083".parse().unwrap())
        );
        assert_eq!(
            pick_ingress(&nodes("d")),
            Some("127.0.0.1:8082".parse().unwrap())
        );
        assert_eq!(
            pick_ingress(&nodes("a")),
            Some("127.0.0.1:8082".parse().unwrap())
        );
        let empty = NodesResponse {
            self_id: "d".into(),
            nodes: vec![node("d", NodeStatus::Live, None)],
        };
        assert_eq!(pick_ingress(&empty), None);
    }

    #[test]
    fn the_opener_is_the_platforms_if_present() {
        assert_eq!(opener(false, |_| true), Some("xdg-open"));
        assert_eq!(opener(true, |_| true), Some("open"));
        assert_eq!(opener(false, |program| program == "open"), None);
    }
}
