//! The route table: which app a request is for (by Host and path) and which backends may
//! serve it. Plain data, rebuilt from a snapshot of the catalog and of the container records
//! and swapped in whole, so readers never see half an update.
//!
//! Routing rules:
//! - every app answers on `APP.<base domain>` (base [`DEFAULT_BASE_DOMAIN`] unless set) and
//!   on every domain of its current manifest;
//! - host names match case-insensitively; a port in the Host header and a trailing dot are
//!   ignored;
//! - an app may restrict itself to path prefixes on its hosts; on one host the longest
//!   matching prefix wins, matched by whole path segments (`/api` matches `/api` and
//!   `/api/x`, not `/apix`);
//! - only routable (running + healthy) replicas are backends, and only from the records the
//!   caller passes (those of live nodes);
//! - an app with no routable replica keeps its entry, so the proxy answers 503, not 404;
//! - a domain belongs to one tenant: the tenant of the app with the oldest claim on it
//!   (the record's claim stamp, the same on every node); other tenants' apps get no
//!   route on it, so nobody can take another tenant's traffic by naming its domain;
//! - the node-local balancer's table ([`RouteTable::internal`]) has one host per app,
//!   `APP.internal`, for every path, and no domains: apps call each other by name there.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use proto::ContainerRecord;
use proto::catalog::{AppRecord, Stamp};
use proto::routes::RouteFeed;

/// The base domain apps answer under when none is configured: `web.localhost`.
pub const DEFAULT_BASE_DOMAIN: &str = "localhost";

/// The domain apps call each other under, through the node-local balancer: `APP.internal`
/// (Fly.io's name for the same thing).
pub const INTERNAL_DOMAIN: &str = "internal";

/// The stable identity of a backend within its app: its [`Backend::group_key`]. Cheap to
/// clone; the balancer keys its per-backend state by it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(Arc<str>);

impl BackendId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One replica traffic may be sent to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: SocketAddr,
    pub node_id: String,
    pub container_id: String,
    pub release: u64,
    /// `APP/NODE/CONTAINER`: unique per app and container. The proxy must put it (see
    /// [`Backend::pool_group`]) into the upstream peer so pooled connections are never
    /// shared between two containers that reuse the same IP:port, let alone two apps.
    pub group_key: BackendId,
}

impl Backend {
    pub fn new(app: &str, node_id: &str, record: &ContainerRecord) -> Backend {
        Backend {
            addr: record.addr,
            node_id: node_id.to_string(),
            container_id: record.id.clone(),
            release: record.release,
            group_key: BackendId(format!("{app}/{node_id}/{}", record.id).into()),
        }
    }

    pub fn id(&self) -> &BackendId {
        &self.group_key
    }

    /// The group key as a `u64` for Pingora's `HttpPeer::group_key` (FNV-1a 64 of the
    /// string: stable across processes and releases, so logs can quote it).
    pub fn pool_group(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        self.group_key.as_str().bytes().fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
    }
}

/// What the route table needs to know about one app of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteApp {
    pub name: String,
    /// Extra host names (the manifest's `domains`).
    pub domains: Vec<String>,
    /// Path prefixes the app serves on each of its hosts; empty: every path (`/`).
    pub path_prefixes: Vec<String>,
    /// The app's tenant (`None`: the cluster administrator's).
    pub tenant: Option<String>,
    /// When the app claimed each of its domains; a domain without one counts as claimed
    /// at the oldest possible time.
    pub domain_claims: BTreeMap<String, Stamp>,
}

impl RouteApp {
    /// An app reachable on its default host only, for every path.
    pub fn new(name: impl Into<String>) -> RouteApp {
        RouteApp {
            name: name.into(),
            domains: Vec::new(),
            path_prefixes: Vec::new(),
            tenant: None,
            domain_claims: BTreeMap::new(),
        }
    }

    /// The routes of a catalog record: its name and its current release's domains and
    /// `[[routes]]` path prefixes. `None` for a tombstone, whose lingering containers must
    /// get no traffic.
    pub fn from_record(record: &AppRecord) -> Option<RouteApp> {
        if record.deleted {
            return None;
        }
        let manifest = record.release.as_ref().map(|release| &release.manifest);
        Some(RouteApp {
            name: record.name.clone(),
            domains: manifest.map(|m| m.domains.clone()).unwrap_or_default(),
            path_prefixes: manifest
                .map(|m| m.routes.iter().map(|route| route.path.clone()).collect())
                .unwrap_or_default(),
            tenant: record.tenant.clone(),
            domain_claims: record.domain_claims.clone(),
        })
    }

    /// The app as `tenant`'s.
    pub fn of_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The app's claim on `domain` dates from `stamp`.
    pub fn claimed(mut self, domain: &str, stamp: Stamp) -> Self {
        self.domain_claims.insert(normalize_host(domain), stamp);
        self
    }

    pub fn with_domains(mut self, domains: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.domains.extend(domains.into_iter().map(Into::into));
        self
    }

    pub fn with_path_prefixes(
        mut self,
        prefixes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.path_prefixes
            .extend(prefixes.into_iter().map(Into::into));
        self
    }
}

/// Two apps claimed the same host and path prefix; `winner` got it (see
/// [`RouteTable::build`] for the rule), `loser` did not. For logs: every ingress resolves it
/// the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConflict {
    pub host: String,
    pub path_prefix: String,
    pub winner: String,
    pub loser: String,
}

/// The tenant each claimed domain belongs to: the one whose app claimed it first (ties
/// broken by app name), so every ingress decides alike from the same records.
fn domain_owners(apps: &[RouteApp]) -> BTreeMap<String, Option<String>> {
    let oldest = Stamp {
        wall_ms: 0,
        counter: 0,
        node_id: String::new(),
    };
    let mut first: BTreeMap<String, (&Stamp, &str, Option<&str>)> = BTreeMap::new();
    for app in apps {
        for domain in &app.domains {
            let domain = normalize_host(domain);
            let since = app.domain_claims.get(&domain).unwrap_or(&oldest);
            let claim = (since, app.name.as_str(), app.tenant.as_deref());
            match first.get(&domain) {
                Some(known) if (known.0, known.1) <= (claim.0, claim.1) => {}
                _ => {
                    first.insert(domain, claim);
                }
            }
        }
    }
    first
        .into_iter()
        .map(|(domain, (_, _, tenant))| (domain, tenant.map(str::to_string)))
        .collect()
}

/// The answer to "where does this request go".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// No app answers on this host and path: 404.
    Unknown,
    /// The app exists but has no routable replica: 503.
    NoBackend { app: &'a str },
    /// Never empty.
    Backends {
        app: &'a str,
        backends: &'a [Backend],
    },
}

/// Per host, `(prefix, app)` sorted longest prefix first.
type HostRoutes = Vec<(String, String)>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    hosts: HashMap<String, HostRoutes>,
    apps: BTreeMap<String, Vec<Backend>>,
    /// Each app's tenant (`None`: the administrator's), for callers scoped to a tenant.
    tenants: HashMap<String, Option<String>>,
    conflicts: Vec<RouteConflict>,
}

impl RouteTable {
    /// The table of an agent's [`RouteFeed`]: its app records and every node's replicas.
    pub fn from_feed(base_domain: &str, feed: &RouteFeed) -> RouteTable {
        RouteTable::build(
            base_domain,
            feed.apps.iter().filter_map(RouteApp::from_record),
            feed.replicas
                .iter()
                .map(|(node_id, record)| (node_id.as_str(), record)),
        )
    }

    /// The node-local balancer's table of the same feed: `APP.internal` for each app, for
    /// every path; no domains (a public name is the ingress's business, and another
    /// tenant's domain claim must not decide what an internal name reaches).
    pub fn internal(feed: &RouteFeed) -> RouteTable {
        RouteTable::build(
            INTERNAL_DOMAIN,
            feed.apps
                .iter()
                .filter_map(RouteApp::from_record)
                .map(|app| RouteApp {
                    domains: Vec::new(),
                    path_prefixes: Vec::new(),
                    domain_claims: BTreeMap::new(),
                    ..app
                }),
            feed.replicas
                .iter()
                .map(|(node_id, record)| (node_id.as_str(), record)),
        )
    }

    /// Builds the table from the catalog's apps and the `(node_id, record)` pairs of live
    /// nodes. `base_domain` is lowercased; empty means [`DEFAULT_BASE_DOMAIN`].
    ///
    /// Records of apps not in `apps` are ignored (a destroyed app gets no traffic while its
    /// containers drain). When two apps claim the same host and prefix, the app whose
    /// default host it is wins over a domain claim; otherwise the smaller app name wins.
    pub fn build<'a>(
        base_domain: &str,
        apps: impl Iterator<Item = RouteApp>,
        records: impl IntoIterator<Item = (&'a str, &'a ContainerRecord)>,
    ) -> RouteTable {
        let base = normalize_host(base_domain);
        let base = if base.is_empty() {
            DEFAULT_BASE_DOMAIN.to_string()
        } else {
            base
        };
        // (host, prefix) -> (is the app's default host, app name); the smallest wins after
        // flipping the flag so default-host claims sort first.
        let mut claims: BTreeMap<(String, String), BTreeSet<(bool, String)>> = BTreeMap::new();
        let mut backends: BTreeMap<String, Vec<Backend>> = BTreeMap::new();
        let mut tenants: HashMap<String, Option<String>> = HashMap::new();
        let apps: Vec<RouteApp> = apps.collect();
        let owners = domain_owners(&apps);
        for app in apps {
            let default_host = format!("{}.{base}", app.name.to_ascii_lowercase());
            let prefixes: BTreeSet<String> = if app.path_prefixes.is_empty() {
                BTreeSet::from(["/".to_string()])
            } else {
                app.path_prefixes
                    .iter()
                    .map(|p| normalize_prefix(p))
                    .collect()
            };
            let hosts = std::iter::once((default_host, true)).chain(
                app.domains
                    .iter()
                    .map(|d| (normalize_host(d), false))
                    .filter(|(d, _)| !d.is_empty())
                    .filter(|(d, _)| owners.get(d) == Some(&app.tenant)),
            );
            for (host, is_default) in hosts {
                for prefix in &prefixes {
                    claims
                        .entry((host.clone(), prefix.clone()))
                        .or_default()
                        .insert((!is_default, app.name.clone()));
                }
            }
            tenants.insert(app.name.clone(), app.tenant.clone());
            backends.entry(app.name).or_default();
        }
        for (node_id, record) in records {
            if !record.is_routable() {
                continue;
            }
            if let Some(list) = backends.get_mut(&record.app) {
                list.push(Backend::new(&record.app, node_id, record));
            }
        }
        for list in backends.values_mut() {
            list.sort();
            list.dedup_by(|a, b| a.group_key == b.group_key);
        }
        let mut hosts: HashMap<String, HostRoutes> = HashMap::new();
        let mut conflicts = Vec::new();
        for ((host, prefix), claimants) in claims {
            let mut claimants = claimants.into_iter();
            let Some((_, winner)) = claimants.next() else {
                continue;
            };
            for (_, loser) in claimants {
                conflicts.push(RouteConflict {
                    host: host.clone(),
                    path_prefix: prefix.clone(),
                    winner: winner.clone(),
                    loser,
                });
            }
            hosts.entry(host).or_default().push((prefix, winner));
        }
        for routes in hosts.values_mut() {
            routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        }
        RouteTable {
            hosts,
            apps: backends,
            tenants,
            conflicts,
        }
    }

    /// Where a request for `host` (a Host header or `:authority`, port allowed) and `path`
    /// (a query string is ignored) goes.
    pub fn lookup(&self, host: &str, path: &str) -> Lookup<'_> {
        let host = normalized_host(host);
        let Some(routes) = self.hosts.get(host.as_ref()) else {
            return Lookup::Unknown;
        };
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let Some((_, app)) = routes
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
        else {
            return Lookup::Unknown;
        };
        match self.apps.get_key_value(app) {
            Some((app, backends)) if !backends.is_empty() => Lookup::Backends { app, backends },
            Some((app, _)) => Lookup::NoBackend { app },
            None => Lookup::Unknown,
        }
    }

    /// `None` for an unknown app; an empty slice for an app with no healthy replica.
    pub fn backends(&self, app: &str) -> Option<&[Backend]> {
        self.apps.get(app).map(Vec::as_slice)
    }

    /// The tenant of `app` (`Some(None)`: the administrator's); `None` for an unknown app.
    pub fn owner(&self, app: &str) -> Option<Option<&str>> {
        self.tenants.get(app).map(Option::as_deref)
    }

    /// Every app with its backends, by name.
    pub fn apps(&self) -> impl Iterator<Item = (&str, &[Backend])> {
        self.apps
            .iter()
            .map(|(name, backends)| (name.as_str(), backends.as_slice()))
    }

    /// Host and path claims lost to another app, for logs.
    pub fn conflicts(&self) -> &[RouteConflict] {
        &self.conflicts
    }

    /// Number of apps.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

/// What changed for one app between two tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppDiff {
    pub added: Vec<Backend>,
    pub removed: Vec<Backend>,
}

/// What changed between two tables, for logs and metrics. Apps whose backends did not
/// change are absent from `apps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDiff {
    pub apps_added: Vec<String>,
    pub apps_removed: Vec<String>,
    pub apps: BTreeMap<String, AppDiff>,
}

impl RouteDiff {
    pub fn is_empty(&self) -> bool {
        self.apps_added.is_empty() && self.apps_removed.is_empty() && self.apps.is_empty()
    }
}

/// Backends added and removed per app from `old` to `new` (an app's backends all count as
/// added when it appears, removed when it goes).
pub fn diff(old: &RouteTable, new: &RouteTable) -> RouteDiff {
    let mut result = RouteDiff::default();
    let names: BTreeSet<&String> = old.apps.keys().chain(new.apps.keys()).collect();
    let empty = Vec::new();
    for name in names {
        let before = old.apps.get(name);
        let after = new.apps.get(name);
        match (before, after) {
            (None, Some(_)) => result.apps_added.push(name.clone()),
            (Some(_), None) => result.apps_removed.push(name.clone()),
            _ => {}
        }
        let before: BTreeSet<&Backend> = before.unwrap_or(&empty).iter().collect();
        let after: BTreeSet<&Backend> = after.unwrap_or(&empty).iter().collect();
        let app = AppDiff {
            added: after.difference(&before).map(|b| (*b).clone()).collect(),
            removed: before.difference(&after).map(|b| (*b).clone()).collect(),
        };
        if !app.added.is_empty() || !app.removed.is_empty() {
            result.apps.insert(name.clone(), app);
        }
    }
    result
}

/// `Example.COM:8080` → `example.com`; `[::1]:80` → `[::1]`; `example.com.` → `example.com`.
pub fn normalize_host(host: &str) -> String {
    normalized_host(host).into_owned()
}

/// [`normalize_host`] without a copy when `host` is already normalized (the common case:
/// a lowercase name without port), as each request's lookup needs it.
fn normalized_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop what follows `]`.
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = without_port.trim_end_matches('.');
    if name.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// `api/` → `/api`; `` → `/`.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// Whole-segment prefix match: `/api` matches `/api`, `/api/`, `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proto::{ContainerHealth, ContainerState};

    use super::*;

    fn record(id: &str, app: &str, port: u16, health: ContainerHealth) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            app: app.into(),
            release: 1,
            replica: 0,
            addr: SocketAddr::from(([127, 0, 0, 2], port)),
            state: ContainerState::Running,
            health,
            detail: None,
        }
    }

    fn table(apps: Vec<RouteApp>, records: &[(&str, ContainerRecord)]) -> RouteTable {
        RouteTable::build(
            "localhost",
            apps.into_iter(),
            records.iter().map(|(node, record)| (*node, record)),
        )
    }

    fn app_of(lookup: Lookup<'_>) -> Option<&str> {
        match lookup {
            Lookup::Unknown => None,
            Lookup::NoBackend { app } | Lookup::Backends { app, .. } => Some(app),
        }
    }

    #[test]
    fn only_healthy_running_replicas_are_backends_and_known_apps_stay_known() {
        let mut starting = record("d", "web", 4, ContainerHealth::Healthy);
        starting.state = ContainerState::Starting;
        let records = [
            ("n1", record("a", "web", 1, ContainerHealth::Healthy)),
            ("n2", record("b", "web", 2, ContainerHealth::Unhealthy)),
            ("n2", record("c", "api", 3, ContainerHealth::Unknown)),
            ("n3", starting),
        ];
        let table = table(vec![RouteApp::new("web"), RouteApp::new("api")], &records);
        let web = table.backends("web").unwrap();
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].node_id, "n1");
        assert_eq!(table.backends("api"), Some(&[][..]));
        assert_eq!(table.backends("nope"), None);
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.lookup("api.localhost", "/"),
            Lookup::NoBackend { app: "api" }
        );
        assert!(matches!(
            table.lookup("web.localhost", "/"),
            Lookup::Backends { app: "web", backends } if backends.len() == 1
        ));
        assert_eq!(table.lookup("nope.localhost", "/"), Lookup::Unknown);
    }

    #[test]
    fn hosts_match_case_insensitively_without_port_or_trailing_dot() {
        let records = [("n1", record("a", "web", 1, ContainerHealth::Healthy))];
        let table = table(
            vec![RouteApp::new("web").with_domains(["Shop.Example.com"])],
            &records,
        );
        for host in [
            "web.localhost",
            "WEB.LocalHost:8080",
            "shop.example.com",
            "SHOP.EXAMPLE.COM:443",
            "shop.example.com.",
        ] {
            assert_eq!(app_of(table.lookup(host, "/x")), Some("web"), "{host}");
        }
        assert_eq!(table.lookup("example.com", "/"), Lookup::Unknown);
        assert_eq!(table.lookup("localhost", "/"), Lookup::Unknown);
    }

    #[test]
    fn the_base_domain_is_configurable_and_defaults_to_localhost() {
        let custom = RouteTable::build(
            "Apps.Example.NET",
            [RouteApp::new("web")].into_iter(),
            std::iter::empty(),
        );
        assert_eq!(
            custom.lookup("web.apps.example.net", "/"),
            Lookup::NoBackend { app: "web" }
        );
        assert_eq!(custom.lookup("web.localhost", "/"), Lookup::Unknown);
        let default = RouteTable::build("", [RouteApp::new("web")].into_iter(), std::iter::empty());
        assert_eq!(
            default.lookup("web.localhost", "/"),
            Lookup::NoBackend { app: "web" }
        );
    }

    #[test]
    fn apps_come_from_catalog_records_and_tombstones_route_nothing() {
        let mut record = app_record(
            "shop",
            "name = \"shop\"\ncmd = \"x\"\ndomains = [\"Shop.Example.com\"]",
        );
        let app = RouteApp::from_record(&record).unwrap();
        assert_eq!(app.domains, vec!["shop.example.com"]);
        record.deleted = true;
        assert_eq!(RouteApp::from_record(&record), None);

        // Containers of an app missing from the catalog get no route.
        let records = [("n1", record_for_missing_app())];
        let table = table(vec![], &records);
        assert!(table.is_empty());
        assert_eq!(table.lookup("ghost.localhost", "/"), Lookup::Unknown);
    }

    fn app_record(name: &str, manifest: &str) -> AppRecord {
        AppRecord {
            tenant: None,
            builds: Default::default(),
            name: name.into(),
            stamp: proto::catalog::Stamp {
                wall_ms: 1,
                counter: 0,
                node_id: "n1".into(),
            },
            deleted: false,
            release: Some(proto::catalog::Release {
                config: None,
                image: None,
                number: 1,
                bundle: proto::catalog::BlobRef {
                    sha256: "00".into(),
                    size: 1,
                },
                manifest: proto::manifest::Manifest::parse(manifest, None).unwrap(),
                created_at_ms: 1,
                created_on: "n1".into(),
                note: None,
            }),
            replicas: 1,
            failed: Default::default(),
            domain_claims: Default::default(),
        }
    }

    /// The balancer's table of the same feed: `APP.internal` for every path, no domains,
    /// and each app's tenant kept for scoped callers.
    #[test]
    fn the_internal_table_names_every_app_under_internal_with_its_tenant() {
        let mut api = app_record(
            "api",
            "name = \"api\"\ncmd = \"x\"\ndomains = [\"api.example.com\"]\n\
             [[routes]]\npath = \"/v1\"",
        );
        api.tenant = Some("acme".into());
        let feed = RouteFeed {
            apps: vec![
                api,
                app_record("admin-app", "name = \"admin-app\"\ncmd = \"x\""),
            ],
            replicas: vec![("n1".into(), record("a", "api", 1, ContainerHealth::Healthy))],
        };
        let table = RouteTable::internal(&feed);
        for path in ["/", "/v1/x", "/other"] {
            assert_eq!(
                app_of(table.lookup("API.internal:80", path)),
                Some("api"),
                "{path}"
            );
        }
        assert_eq!(table.lookup("api.example.com", "/v1"), Lookup::Unknown);
        assert_eq!(table.lookup("api.localhost", "/"), Lookup::Unknown);
        assert_eq!(
            table.lookup("admin-app.internal", "/"),
            Lookup::NoBackend { app: "admin-app" }
        );
        assert_eq!(table.owner("api"), Some(Some("acme")));
        assert_eq!(table.owner("admin-app"), Some(None));
        assert_eq!(table.owner("ghost"), None);
        // The public table of the same feed keeps its domains and prefixes.
        let public = RouteTable::from_feed("localhost", &feed);
        assert_eq!(app_of(public.lookup("api.example.com", "/v1")), Some("api"));
        assert_eq!(public.lookup("api.internal", "/"), Lookup::Unknown);
    }

    /// From `stratus.toml` to a lookup: an app with `[[routes]] path = "/api"` on a shared
    /// domain gets `/api` and what is under it, the app without routes gets the rest.
    #[test]
    fn manifest_routes_split_a_shared_domain_by_path() {
        let catalog = [
            app_record(
                "api",
                "name = \"api\"\ncmd = \"x\"\ndomains = [\"shop.example.com\"]\n\
                 [[routes]]\npath = \"/api/\"",
            ),
            app_record(
                "site",
                "name = \"site\"\ncmd = \"x\"\ndomains = [\"Shop.Example.com\"]",
            ),
        ];
        let records = [
            ("n1", record("a", "api", 1, ContainerHealth::Healthy)),
            ("n2", record("s", "site", 2, ContainerHealth::Healthy)),
        ];
        let table = RouteTable::build(
            "localhost",
            catalog.iter().filter_map(RouteApp::from_record),
            records.iter().map(|(node, record)| (*node, record)),
        );
        for (path, app) in [
            ("/api", "api"),
            ("/api/", "api"),
            ("/api/orders/7?x=1", "api"),
            ("/", "site"),
            ("/apix", "site"),
            ("/about/api", "site"),
        ] {
            assert_eq!(
                app_of(table.lookup("shop.example.com", path)),
                Some(app),
                "{path}"
            );
        }
        // The prefix holds on the app's default host too.
        assert_eq!(app_of(table.lookup("api.localhost", "/api/x")), Some("api"));
        assert_eq!(table.lookup("api.localhost", "/"), Lookup::Unknown);
        assert!(table.conflicts().is_empty());
    }

    fn stamp(wall_ms: u64) -> Stamp {
        Stamp {
            wall_ms,
            counter: 0,
            node_id: "n1".into(),
        }
    }

    /// Tenant B naming tenant A's domain gets no route on it, whatever order the records
    /// come in; B's app still answers on its own host, and A's apps still share paths.
    #[test]
    fn a_domain_belongs_to_the_tenant_that_claimed_it_first() {
        let records = [
            ("n1", record("a", "shop", 1, ContainerHealth::Healthy)),
            ("n1", record("b", "thief", 2, ContainerHealth::Healthy)),
            ("n1", record("c", "shop-api", 3, ContainerHealth::Healthy)),
        ];
        let apps = vec![
            RouteApp::new("shop")
                .with_domains(["shop.example.com"])
                .of_tenant("a")
                .claimed("shop.example.com", stamp(10)),
            RouteApp::new("shop-api")
                .with_domains(["shop.example.com"])
                .with_path_prefixes(["/api"])
                .of_tenant("a")
                .claimed("shop.example.com", stamp(30)),
            // Claimed later, and its name sorts first: still loses to the older claim.
            RouteApp::new("thief")
                .with_domains(["Shop.Example.com"])
                .of_tenant("b")
                .claimed("shop.example.com", stamp(20)),
        ];
        for order in [apps.clone(), apps.iter().rev().cloned().collect()] {
            let table = table(order, &records);
            assert_eq!(app_of(table.lookup("shop.example.com", "/")), Some("shop"));
            assert_eq!(
                app_of(table.lookup("shop.example.com", "/api/x")),
                Some("shop-api")
            );
            assert_eq!(app_of(table.lookup("thief.localhost", "/")), Some("thief"));
        }
    }

    fn record_for_missing_app() -> ContainerRecord {
        record("g", "ghost", 9, ContainerHealth::Healthy)
    }

    #[test]
    fn the_longest_path_prefix_wins_by_whole_segments() {
        let records = [
            ("n1", record("a", "site", 1, ContainerHealth::Healthy)),
            ("n1", record("b", "api", 2, ContainerHealth::Healthy)),
            ("n1", record("c", "admin", 3, ContainerHealth::Healthy)),
        ];
        let table = table(
            vec![
                RouteApp::new("site").with_domains(["example.com"]),
                RouteApp::new("api")
                    .with_domains(["example.com"])
                    .with_path_prefixes(["/api/"]),
                RouteApp::new("admin")
                    .with_domains(["example.com"])
                    .with_path_prefixes(["api/admin"]),
            ],
            &records,
        );
        let cases = [
            ("/", "site"),
            ("/apix", "site"),
            ("/api", "api"),
            ("/api/", "api"),
            ("/api/users?admin=1", "api"),
            ("/api/admin", "admin"),
            ("/api/admin/x", "admin"),
            ("/api/administrator", "api"),
        ];
        for (path, app) in cases {
            assert_eq!(
                app_of(table.lookup("example.com", path)),
                Some(app),
                "{path}"
            );
        }
        // A prefix-restricted app answers only under its prefix, on its own host too.
        assert_eq!(
            app_of(table.lookup("api.localhost", "/api/v1")),
            Some("api")
        );
        assert_eq!(table.lookup("api.localhost", "/other"), Lookup::Unknown);
        assert!(table.conflicts().is_empty());
    }

    #[test]
    fn conflicting_claims_resolve_the_same_way_everywhere_and_are_reported() {
        let apps = || {
            vec![
                RouteApp::new("zeta").with_domains(["shared.example.com", "web.localhost"]),
                RouteApp::new("alpha").with_domains(["shared.example.com"]),
                RouteApp::new("web"),
            ]
        };
        let forward = table(apps(), &[]);
        let backward = table(apps().into_iter().rev().collect(), &[]);
        assert_eq!(forward, backward);
        assert_eq!(
            app_of(forward.lookup("shared.example.com", "/")),
            Some("alpha")
        );
        // The default host belongs to its app even against a smaller name.
        assert_eq!(app_of(forward.lookup("web.localhost", "/")), Some("web"));
        let lost: Vec<(&str, &str)> = forward
            .conflicts()
            .iter()
            .map(|c| (c.host.as_str(), c.loser.as_str()))
            .collect();
        assert_eq!(
            lost,
            vec![("shared.example.com", "zeta"), ("web.localhost", "zeta")]
        );
    }

    #[test]
    fn group_keys_tell_apart_containers_that_reuse_an_address() {
        let old = record("old", "one", 5000, ContainerHealth::Healthy);
        let new = record("new", "two", 5000, ContainerHealth::Healthy);
        let a = Backend::new("one", "n1", &old);
        let b = Backend::new("two", "n1", &new);
        assert_eq!(a.addr, b.addr);
        assert_ne!(a.group_key, b.group_key);
        assert_ne!(a.pool_group(), b.pool_group());
        assert_eq!(a.group_key.as_str(), "one/n1/old");
        assert_eq!(a.pool_group(), Backend::new("one", "n1", &old).pool_group());
    }

    #[test]
    fn diff_lists_added_and_removed_backends_per_app() {
        let before = table(
            vec![RouteApp::new("web"), RouteApp::new("gone")],
            &[
                ("n1", record("a", "web", 1, ContainerHealth::Healthy)),
                ("n1", record("b", "web", 2, ContainerHealth::Healthy)),
                ("n1", record("g", "gone", 3, ContainerHealth::Healthy)),
            ],
        );
        let after = table(
            vec![RouteApp::new("web"), RouteApp::new("new")],
            &[
                ("n1", record("b", "web", 2, ContainerHealth::Healthy)),
                ("n2", record("c", "web", 4, ContainerHealth::Healthy)),
            ],
        );
        let change = diff(&before, &after);
        assert_eq!(change.apps_added, vec!["new"]);
        assert_eq!(change.apps_removed, vec!["gone"]);
        let web = &change.apps["web"];
        assert_eq!(web.added.len(), 1);
        assert_eq!(web.added[0].container_id, "c");
        assert_eq!(web.removed.len(), 1);
        assert_eq!(web.removed[0].container_id, "a");
        assert_eq!(change.apps["gone"].removed.len(), 1);
        assert!(!change.apps.contains_key("new"));
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert!(matches!(
            normalized_host("app.example.com:8080"),
            Cow::Borrowed("app.example.com")
        ));
        assert!(matches!(normalized_host("App.example.com"), Cow::Owned(_)));
        assert_eq!(normalize_host(" a.b "), "a.b");
    }

    proptest! {
        /// Whatever the snapshot, every routable record of a known app is a backend of
        /// exactly its app, apps keep an entry, and the diff of a table with itself is empty.
        #[test]
        fn every_routable_record_of_a_known_app_is_one_backend(
            records in proptest::collection::vec(
                (0usize..3, 0usize..4, 0u16..50, any::<bool>(), any::<bool>()),
                0..40,
            ),
        ) {
            let apps = ["a", "b", "c", "d"];
            let nodes = ["n1", "n2", "n3"];
            let records: Vec<(&str, ContainerRecord)> = records
                .iter()
                .enumerate()
                .map(|(i, (node, app, port, healthy, running))| {
                    let mut r = record(
                        &format!("c{i}"),
                        apps[*app],
                        *port,
                        if *healthy { ContainerHealth::Healthy } else { ContainerHealth::Unhealthy },
                    );
                    if !running {
                        r.state = ContainerState::Exited;
                    }
                    (nodes[*node], r)
                })
                .collect();
            // "d" is not in the catalog.
            let built = table(apps[..3].iter().map(|a| RouteApp::new(*a)).collect(), &records);
            prop_assert_eq!(built.len(), 3);
            for (node, r) in &records {
                let expected = r.is_routable() && r.app != "d";
                let found = built
                    .backends(&r.app)
                    .unwrap_or_default()
                    .iter()
                    .filter(|b| b.container_id == r.id && b.node_id == *node)
                    .count();
                prop_assert_eq!(found, usize::from(expected));
            }
            for app in &apps[..3] {
                let lookup = built.lookup(&format!("{}.LOCALHOST:1", app.to_uppercase()), "/");
                prop_assert_eq!(app_of(lookup), Some(*app));
            }
            prop_assert!(diff(&built, &built).is_empty());
            let change = diff(&RouteTable::default(), &built);
            let added: usize = change.apps.values().map(|a| a.added.len()).sum();
            let total: usize = built.apps().map(|(_, b)| b.len()).sum();
            prop_assert_eq!(added, total);
        }
    }
}
