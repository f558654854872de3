//! The whole router driven with `oneshot`, no sockets (axum's `testing` example): each
//! route's auth, each error's status and body, 404 and 405 from the router itself, the
//! timeouts, uploads and the OpenAPI document.
//!
//! The agent is replaced by `FakeNode`, which answers from a few fixed values: what is
//! tested here is the HTTP layer, not the node.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::node_auth::{CONTENT_SHA256, CallParts, REPLAY_CAPACITY, Verifier, sha256_hex};
use api::{
    ApiConfig, ApiError, AppsService, AuditQuery, AuditService, AuditedCall, Authenticate,
    BlobsService, Caller, ErrorCode, EventQuery, EventStream, EventsService, InternalService,
    LineStream, LogQuery, MacKey, MetricsService, NodeAuth, NodeSigner, NodesService, Principal,
    TenancyService, TenantCaller, Upload,
};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use proto::api::{
    AppView, AppsResponse, ChangeAccepted, DeployAccepted, DrainReply, ErrorBody, GossipStats,
    HealthResponse, NodesResponse, PlacementReply, PlacementRequest, ReleasesResponse,
    RollbackRequest, ScaleRequest, StopRequest,
};
use proto::api::{
    CreateTenantRequest, CreateTokenRequest, ReserveQuota, TenantView, TenantsResponse,
    TokenCreated, TokenView, TokensResponse,
};
use proto::catalog::AppRecord;
use proto::events::{Change, Event, EventLine};
use proto::tenancy::{Quota, Role, TenancyRecord};
use tower::ServiceExt as _;

const USER: &str = "user-token";
/// Not a token: `call` signs the request as a node instead ([`signed_request`]).
const NODE: &str = "node-token";
/// The authority node calls are addressed to, and the fixture's MAC key.
const NODE_HOST: &str = "node-1.test:7070";
const NODE_KEY: [u8; 32] = [7; 32];
/// Tokens of tenant `acme`, one per role, and one the node refuses with a reason.
const READER: &str = "reader-token";
const DEPLOYER: &str = "deployer-token";
const TENANT_ADMIN: &str = "tenant-admin-token";
const REVOKED: &str = "revoked-token";
/// An app name the fake knows; any other is unknown.
const KNOWN: &str = "web";
/// An app name whose calls never answer (for the timeouts).
const HANGS: &str = "hangs";
/// A blob digest whose storage fails.
const BROKEN_BLOB: &str = "bb";

struct FakeNode {
    upload_dir: PathBuf,
    /// The last deploy's (app, sha256, size), to check what the router handed over.
    deployed: tokio::sync::Mutex<Option<(String, String, u64)>>,
    /// Every call the audit layer handed over.
    audited: tokio::sync::Mutex<Vec<AuditedCall>>,
    /// Every request the metrics layer timed: `METHOD route status`.
    timed: tokio::sync::Mutex<Vec<String>>,
    node_auth: NodeAuth,
}

fn node_key() -> MacKey {
    MacKey::new("fixture1", NODE_KEY)
}

fn app_view(name: &str) -> AppView {
    AppView {
        name: name.to_string(),
        replicas_desired: 1,
        release: None,
        releases: vec![],
        replicas: vec![],
        failure: None,
        failed_releases: Default::default(),
    }
}

async fn known(app: &str) -> Result<(), ApiError> {
    match app {
        KNOWN => Ok(()),
        HANGS => std::future::pending().await,
        _ => Err(ApiError::UnknownApp(app.to_string())),
    }
}

fn accepted(app: &str) -> ChangeAccepted {
    ChangeAccepted {
        app: app.to_string(),
        release: 1,
        replicas: 1,
        message: "ok".into(),
    }
}

fn tenant_caller(role: Role) -> Caller {
    Caller::User(Principal::Tenant(TenantCaller {
        tenant: "acme".into(),
        role,
        token_id: "0123456789abcdef".into(),
        token_name: Some("ci".into()),
        expires_at_ms: None,
    }))
}

impl Authenticate for FakeNode {
    fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        match token {
            USER => Ok(Caller::User(Principal::Admin)),
            READER => Ok(tenant_caller(Role::Read)),
            DEPLOYER => Ok(tenant_caller(Role::Deploy)),
            TENANT_ADMIN => Ok(tenant_caller(Role::Admin)),
            REVOKED => Err(ApiError::TokenRefused(
                "token 0123456789abcdef was revoked: ask an admin of its tenant for a new one"
                    .into(),
            )),
            _ => Err(ApiError::Unauthorized),
        }
    }

    fn node_auth(&self) -> Option<&NodeAuth> {
        Some(&self.node_auth)
    }
}

impl AuditService for FakeNode {
    async fn record_audit(&self, call: AuditedCall) {
        self.audited.lock().await.push(call);
    }
    async fn gather_audit(&self, _: AuditQuery) -> proto::api::AuditResponse {
        proto::api::AuditResponse {
            records: vec![],
            unreachable: vec![],
        }
    }
    async fn local_audit(&self, _: AuditQuery) -> Result<Vec<proto::api::AuditRecord>, ApiError> {
        Ok(vec![])
    }
}

impl TenancyService for FakeNode {
    async fn tenants(&self, _: &Principal) -> TenantsResponse {
        TenantsResponse { tenants: vec![] }
    }
    async fn create_tenant(
        &self,
        _: &Principal,
        request: CreateTenantRequest,
    ) -> Result<TenantView, ApiError> {
        Ok(TenantView {
            name: request.name,
            isolation: request.isolation,
            quota: request.quota,
            used: Default::default(),
            created_at_ms: 0,
        })
    }
    async fn delete_tenant(&self, _: &Principal, tenant: &str) -> Result<TenantView, ApiError> {
        Err(ApiError::Conflict(format!(
            "tenant {tenant} still has apps"
        )))
    }
    async fn set_quota(&self, _: &Principal, _: &str, _: Quota) -> Result<TenantView, ApiError> {
        Err(ApiError::Unavailable("fake".into()))
    }
    async fn tokens(&self, _: &Principal, _: Option<&str>) -> TokensResponse {
        TokensResponse { tokens: vec![] }
    }
    async fn create_token(
        &self,
        _: &Principal,
        _: CreateTokenRequest,
    ) -> Result<TokenCreated, ApiError> {
        Err(ApiError::Unavailable("fake".into()))
    }
    async fn revoke_token(&self, _: &Principal, _: &str) -> Result<TokenView, ApiError> {
        Err(ApiError::Unavailable("fake".into()))
    }
}

impl NodesService for FakeNode {
    async fn health(&self) -> HealthResponse {
        HealthResponse {
            status: "ok".into(),
            node_id: "n1".into(),
            version: "test".into(),
            gossip: GossipStats::default(),
            checks: Default::default(),
            time_ms: Some(1),
        }
    }
    async fn nodes(&self) -> NodesResponse {
        NodesResponse {
            self_id: "n1".into(),
            nodes: vec![],
        }
    }
    async fn drain(&self, node: &str, draining: bool) -> Result<DrainReply, ApiError> {
        Ok(DrainReply {
            node_id: node.to_string(),
            draining,
        })
    }
}

impl AppsService for FakeNode {
    async fn config(
        &self,
        _: &Principal,
        app: &str,
        show: bool,
    ) -> Result<proto::api::ConfigView, ApiError> {
        known(app).await?;
        Ok(proto::api::ConfigView {
            app: app.to_string(),
            release: 1,
            vars: [("A".to_string(), show.then(|| "1".to_string()))].into(),
        })
    }
    async fn change_config(
        &self,
        _: &Principal,
        app: &str,
        _: proto::api::ConfigChange,
    ) -> Result<ChangeAccepted, ApiError> {
        known(app).await?;
        Ok(accepted(app))
    }
    async fn apps(&self, _: &Principal) -> AppsResponse {
        AppsResponse { apps: vec![] }
    }
    async fn app(&self, _: &Principal, name: &str) -> Result<AppView, ApiError> {
        known(name).await.map(|()| app_view(name))
    }
    async fn destroy(&self, _: &Principal, name: &str) -> Result<AppView, ApiError> {
        known(name).await.map(|()| app_view(name))
    }
    async fn deploy(
        &self,
        _: &Principal,
        app: &str,
        upload: Upload,
        events: api::BuildEvents,
    ) -> Result<DeployAccepted, ApiError> {
        let _ = events.send(proto::build::BuildEvent::Step {
            text: format!("building {app}"),
        });
        if app == "unbuildable" {
            return Err(ApiError::BuildFailed(
                "the Dockerfile's RUN false failed".into(),
            ));
        }
        assert!(
            upload.path().exists(),
            "the upload is on disk while deploy runs"
        );
        *self.deployed.lock().await = Some((app.into(), upload.sha256.clone(), upload.size));
        Ok(DeployAccepted {
            build: None,
            app: app.into(),
            release: 1,
            sha256: upload.sha256.clone(),
            size: upload.size,
            holders: vec!["n1".into()],
            status_url: format!("/v1/apps/{app}"),
        })
    }
    async fn builds(
        &self,
        _: &Principal,
        app: &str,
    ) -> Result<proto::api::BuildsResponse, ApiError> {
        known(app).await?;
        Ok(proto::api::BuildsResponse {
            app: app.into(),
            builds: vec![],
        })
    }
    async fn build_log(
        &self,
        _: &Principal,
        app: &str,
        release: u64,
    ) -> Result<LineStream, ApiError> {
        known(app).await?;
        Ok(Box::pin(futures_util::stream::iter(vec![format!(
            "log of release {release}"
        )])))
    }
    async fn releases(&self, _: &Principal, app: &str) -> Result<ReleasesResponse, ApiError> {
        known(app).await?;
        Ok(ReleasesResponse {
            app: app.into(),
            releases: vec![],
        })
    }
    async fn scale(
        &self,
        _: &Principal,
        app: &str,
        _: ScaleRequest,
    ) -> Result<ChangeAccepted, ApiError> {
        known(app).await.map(|()| accepted(app))
    }
    async fn rollback(
        &self,
        _: &Principal,
        app: &str,
        _: RollbackRequest,
    ) -> Result<ChangeAccepted, ApiError> {
        known(app).await.map(|()| accepted(app))
    }
    async fn restart(&self, _: &Principal, app: &str) -> Result<ChangeAccepted, ApiError> {
        known(app).await.map(|()| accepted(app))
    }
    async fn app_logs(
        &self,
        _: &Principal,
        app: &str,
        query: LogQuery,
    ) -> Result<LineStream, ApiError> {
        known(app).await?;
        let lines = vec![format!(
            "follow={} tail={} previous={}",
            query.follow, query.tail, query.previous
        )];
        Ok(Box::pin(futures_util::stream::iter(lines)))
    }
    async fn replicas(
        &self,
        _: &Principal,
        app: &str,
    ) -> Result<proto::api::ReplicasResponse, ApiError> {
        known(app).await?;
        Ok(proto::api::ReplicasResponse {
            app: app.to_string(),
            node_id: "n1".into(),
            replicas: vec![],
        })
    }
}

/// Two events, 1 and 2; a `since` past 5 is gone.
fn fake_events(caller: &Principal, query: &EventQuery) -> Result<Vec<EventLine>, ApiError> {
    let since = query.since.unwrap_or(0);
    if since > 5 {
        return Err(ApiError::Service {
            code: ErrorCode::Gone,
            detail: format!("event {since} is no longer kept on this node"),
        });
    }
    let joined = Change::NodeJoined {
        node: "n2".into(),
        generation: 1,
    };
    let scaled = Change::Scaled {
        app: KNOWN.into(),
        from: 1,
        to: 2,
    };
    let events = [(1, joined, None), (2, scaled, Some("acme"))]
        .into_iter()
        .filter(|(index, change, tenant)| {
            *index > since
                && query.topic.is_none_or(|topic| topic == change.topic())
                && (caller.is_admin() || change.app().is_none() || caller.tenant() == *tenant)
        })
        .map(|(index, change, tenant)| {
            EventLine::Event(Box::new(Event {
                index,
                at_ms: 1,
                topic: change.topic(),
                subject: change.subject(),
                tenant: tenant.map(str::to_string),
                change,
            }))
        });
    let mut lines: Vec<EventLine> = events.collect();
    if query.follow != Some(false) {
        lines.push(EventLine::Heartbeat { heartbeat: 2 });
    }
    Ok(lines)
}

impl MetricsService for FakeNode {
    async fn metrics(&self) -> String {
        let timed = self.timed.lock().await;
        format!("fake_requests_timed {}\n", timed.len())
    }
    fn observe_request(&self, route: &str, method: &str, status: u16, _: Duration) {
        if let Ok(mut timed) = self.timed.try_lock() {
            timed.push(format!("{method} {route} {status}"));
        }
    }
}

impl EventsService for FakeNode {
    fn events(
        &self,
        caller: &Principal,
        query: EventQuery,
        _: Duration,
    ) -> Result<EventStream, ApiError> {
        Ok(Box::pin(futures_util::stream::iter(fake_events(
            caller, &query,
        )?)))
    }
    async fn app_index(&self, _: &str, index: Option<u64>, wait: Duration) -> u64 {
        match index {
            // The fake's app changes 1 ms into any wait.
            Some(index) => {
                tokio::time::sleep(wait.min(Duration::from_millis(1))).await;
                index + 1
            }
            None => 7,
        }
    }
}

impl BlobsService for FakeNode {
    async fn blob_path(&self, sha256: &str) -> Result<PathBuf, ApiError> {
        if sha256 == BROKEN_BLOB {
            return Err(ApiError::Service {
                code: ErrorCode::Internal,
                detail: "cannot open the blob store: disk on fire".into(),
            });
        }
        Err(ApiError::Service {
            code: ErrorCode::UnknownBlob,
            detail: format!("bundle {sha256} is not stored on this node"),
        })
    }
    async fn put_blob(&self, _: &str, _: Upload) -> Result<(), ApiError> {
        Ok(())
    }
}

impl InternalService for FakeNode {
    async fn hold_record(&self, _: AppRecord) -> Result<(), ApiError> {
        Ok(())
    }
    async fn hold_tenancy(&self, _: TenancyRecord) -> Result<(), ApiError> {
        Ok(())
    }
    async fn reserve_quota(&self, _: &str, _: ReserveQuota) -> Result<(), ApiError> {
        Ok(())
    }
    async fn reserve_release_number(&self, _: &str) -> Result<u64, ApiError> {
        Ok(7)
    }
    async fn build(&self, _: proto::api::BuildRequest) -> Result<LineStream, ApiError> {
        Err(ApiError::Unavailable(
            "this fake node does not build".into(),
        ))
    }
    async fn place(&self, _: PlacementRequest) -> Result<PlacementReply, ApiError> {
        Ok(PlacementReply::Admitted)
    }
    async fn stop_replica(&self, _: StopRequest) -> Result<(), ApiError> {
        Ok(())
    }
    async fn set_draining(&self, draining: bool) -> Result<DrainReply, ApiError> {
        Ok(DrainReply {
            node_id: "n1".into(),
            draining,
        })
    }
    async fn replica_logs(&self, _: &str, _: LogQuery) -> Result<LineStream, ApiError> {
        Ok(Box::pin(futures_util::stream::empty()))
    }
    async fn previous_logs(&self, _: &str, _: LogQuery) -> Result<LineStream, ApiError> {
        Ok(Box::pin(futures_util::stream::empty()))
    }
    async fn replica_usage(&self, _: &str) -> proto::api::NodeUsageReply {
        proto::api::NodeUsageReply {
            node_id: "n1".into(),
            ..Default::default()
        }
    }
}

struct Fixture {
    router: Router,
    node: Arc<FakeNode>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(FakeNode {
        upload_dir: dir.path().join("uploads"),
        deployed: Default::default(),
        audited: Default::default(),
        timed: Default::default(),
        node_auth: NodeAuth::new(Verifier::new(
            vec![node_key()],
            vec![NODE_HOST.to_string()],
            REPLAY_CAPACITY,
        )),
    });
    let mut config = ApiConfig::new(node.upload_dir.clone(), 1000);
    config.request_timeout = Duration::from_secs(5);
    // Tests fire calls as fast as they can: the limit has a test of its own.
    config.rate_limit = None;
    Fixture {
        router: api::router(node.clone(), config),
        node,
        _dir: dir,
    }
}

fn request(method: Method, uri: &str, token: Option<&str>, body: Body) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Vec<u8>) {
    let request = if token == Some(NODE) {
        signed_request(method, uri, body.as_bytes(), None)
    } else {
        request(method, uri, token, Body::from(body.to_string()))
    };
    send(router, request).await
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// A node call as a peer makes it: signed now, for `body` (whose digest is the one in the
/// path for a blob upload, as `Client::put_blob` signs it, unless `digest` says otherwise).
fn signed_request(method: Method, uri: &str, body: &[u8], digest: Option<&str>) -> Request<Body> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let digest = match digest {
        Some(digest) => digest.to_string(),
        None if method == Method::PUT && path.starts_with("/v1/blobs/") => {
            path.trim_start_matches("/v1/blobs/").to_string()
        }
        None => sha256_hex(body),
    };
    let authorization = NodeSigner::new(node_key()).sign(&CallParts {
        method: method.as_str(),
        authority: NODE_HOST,
        path,
        query,
        content_sha256: &digest,
    });
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, NODE_HOST)
        .header(header::AUTHORIZATION, authorization)
        .header(CONTENT_SHA256, digest)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap()
}

fn error_of(bytes: &[u8]) -> ErrorBody {
    serde_json::from_slice(bytes).unwrap_or_else(|err| {
        panic!(
            "not an ErrorBody ({err}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// Every user route, with a body it accepts.
const USER_ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/apps", ""),
    ("GET", "/v1/apps/web", ""),
    ("DELETE", "/v1/apps/web", ""),
    ("POST", "/v1/apps/web/deploys", "zip"),
    ("GET", "/v1/apps/web/releases", ""),
    ("POST", "/v1/apps/web/scale", r#"{"replicas":2}"#),
    ("POST", "/v1/apps/web/rollback", "{}"),
    ("POST", "/v1/apps/web/restart", ""),
    ("GET", "/v1/apps/web/logs", ""),
    ("GET", "/v1/apps/web/replicas", ""),
    ("GET", "/v1/apps/web/builds", ""),
    ("GET", "/v1/apps/web/builds/3/log", ""),
    ("POST", "/v1/nodes/n1/drain", ""),
    ("POST", "/v1/nodes/n1/undrain", ""),
    ("GET", "/v1/apps/web/config", ""),
    ("PATCH", "/v1/apps/web/config", r#"{"set":{"A":"1"}}"#),
    ("GET", "/v1/whoami", ""),
    ("GET", "/v1/tenants", ""),
    ("POST", "/v1/tenants", r#"{"name":"acme"}"#),
    ("GET", "/v1/tokens", ""),
    ("GET", "/v1/audit", ""),
    ("GET", "/v1/events?follow=false", ""),
];

/// Every node-to-node route, with a body it accepts.
fn peer_routes() -> Vec<(&'static str, String, String)> {
    let record = serde_json::json!({
        "name": "web", "stamp": {"wall_ms": 1, "counter": 0, "node_id": "n1"},
        "deleted": true, "release": null, "replicas": 0
    });
    vec![
        ("GET", "/v1/blobs/abc".into(), String::new()),
        (
            "PUT",
            format!("/v1/blobs/{}", sha256_hex(b"zip")),
            "zip".into(),
        ),
        ("PUT", "/v1/internal/apps/web".into(), record.to_string()),
        (
            "POST",
            "/v1/internal/apps/web/numbers".into(),
            String::new(),
        ),
        (
            "GET",
            "/v1/internal/apps/web/previous-logs".into(),
            String::new(),
        ),
        ("GET", "/v1/internal/replicas/p1/logs".into(), String::new()),
        ("GET", "/v1/internal/apps/web/usage".into(), String::new()),
        (
            "POST",
            "/v1/internal/placements/p1/stop".into(),
            r#"{"placement_id":"p1","reason":"test"}"#.into(),
        ),
        (
            "PUT",
            "/v1/internal/draining".into(),
            r#"{"node_id":"n1","draining":true}"#.into(),
        ),
        ("GET", "/v1/internal/audit".into(), String::new()),
        (
            "PUT",
            "/v1/internal/tenancy".into(),
            serde_json::json!({
                "kind": "tenant", "name": "acme", "created_at_ms": 1,
                "stamp": {"wall_ms": 1, "counter": 0, "node_id": "n1"}
            })
            .to_string(),
        ),
        (
            "POST",
            "/v1/internal/tenants/acme/reservations".into(),
            r#"{"app":"web","usage":{"apps":1,"replicas":1,"cpu_millis":250,"memory_bytes":0}}"#
                .into(),
        ),
    ]
}

#[tokio::test]
async fn user_routes_need_the_user_token() {
    let f = fixture();
    for (method, uri, body) in USER_ROUTES {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for token in [None, Some("wrong"), Some(NODE)] {
            let (status, bytes) = call(&f.router, method.clone(), uri, token, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}"
            );
            assert_eq!(error_of(&bytes).error, "unauthorized");
        }
        let (status, bytes) = call(&f.router, method.clone(), uri, Some(USER), body).await;
        assert!(
            status.is_success(),
            "{method} {uri} as a user: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

/// Reads take any role, changes the deploy role, tokens a tenant admin, tenants and
/// drains the cluster administrator; a 403 names the role needed.
#[tokio::test]
async fn each_route_needs_its_role() {
    let f = fixture();
    let needs = |method: &str, uri: &str| match (method, uri) {
        (_, "/v1/nodes/n1/drain" | "/v1/nodes/n1/undrain") | ("POST", "/v1/tenants") => {
            "cluster admin"
        }
        (_, "/v1/tokens" | "/v1/audit") => "admin",
        ("GET", _) => "read",
        _ => "deploy",
    };
    for (method, uri, body) in USER_ROUTES {
        let needed = needs(method, uri);
        let http_method = Method::from_bytes(method.as_bytes()).unwrap();
        for (token, role) in [
            (READER, "read"),
            (DEPLOYER, "deploy"),
            (TENANT_ADMIN, "admin"),
        ] {
            let allowed = match needed {
                "cluster admin" => false,
                "admin" => role == "admin",
                "deploy" => role != "read",
                _ => true,
            };
            let (status, bytes) =
                call(&f.router, http_method.clone(), uri, Some(token), body).await;
            if allowed {
                assert!(status.is_success(), "{method} {uri} as {role}: {status}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri} as {role}");
                let error = error_of(&bytes);
                assert_eq!(error.error, "forbidden");
                assert!(
                    error.detail.contains(&format!("needs the {needed} role")),
                    "{}",
                    error.detail
                );
            }
        }
    }
}

#[tokio::test]
async fn config_values_need_the_deploy_role_to_be_shown() {
    let f = fixture();
    let uri = "/v1/apps/web/config?show=true";
    let (status, bytes) = call(&f.router, Method::GET, uri, Some(READER), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&bytes).detail.contains("deploy role"));
    let (status, bytes) = call(&f.router, Method::GET, uri, Some(DEPLOYER), "").await;
    assert_eq!(status, StatusCode::OK);
    let view: proto::api::ConfigView = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(view.vars["A"].as_deref(), Some("1"));
}

/// Mutating user calls are handed to the audit log with their route and status, whether
/// they passed or not; reads and peer calls are not.
#[tokio::test]
async fn mutating_calls_are_audited_reads_and_peer_calls_are_not() {
    let f = fixture();
    call(
        &f.router,
        Method::POST,
        "/v1/apps/web/scale",
        Some(READER),
        r#"{"replicas":2}"#,
    )
    .await;
    call(
        &f.router,
        Method::POST,
        "/v1/apps/web/restart",
        Some(DEPLOYER),
        "",
    )
    .await;
    call(
        &f.router,
        Method::POST,
        "/v1/apps/web/restart",
        Some("wrong"),
        "",
    )
    .await;
    call(&f.router, Method::GET, "/v1/apps/web", Some(DEPLOYER), "").await;
    call(
        &f.router,
        Method::POST,
        "/v1/internal/apps/web/numbers",
        Some(NODE),
        "",
    )
    .await;
    let audited = f.node.audited.lock().await.clone();
    let seen: Vec<(&str, &str, u16, &str)> = audited
        .iter()
        .map(|c| {
            (
                c.action.as_str(),
                c.token_id.as_str(),
                c.status,
                c.target.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "POST /v1/apps/{app}/scale",
                "0123456789abcdef",
                403,
                "/v1/apps/web/scale"
            ),
            (
                "POST /v1/apps/{app}/restart",
                "0123456789abcdef",
                202,
                "/v1/apps/web/restart"
            ),
            (
                "POST /v1/apps/{app}/restart",
                "none",
                401,
                "/v1/apps/web/restart"
            ),
        ]
    );
    assert_eq!(audited[0].tenant.as_deref(), Some("acme"));
}

#[tokio::test]
async fn a_refused_token_says_why() {
    let f = fixture();
    let (status, bytes) = call(&f.router, Method::GET, "/v1/apps", Some(REVOKED), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let error = error_of(&bytes);
    assert_eq!(error.error, "unauthorized");
    assert!(error.detail.contains("was revoked"), "{}", error.detail);
}

#[tokio::test]
async fn peer_routes_need_a_signed_call_even_where_nothing_is_routed() {
    let f = fixture();
    for (method, uri, body) in peer_routes() {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for token in [None, Some("wrong"), Some(USER)] {
            let (status, bytes) = call(&f.router, method.clone(), &uri, token, &body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}"
            );
            assert_eq!(error_of(&bytes).error, "unauthorized");
        }
    }
    // Probing for internal paths tells a stranger nothing.
    let (status, _) = call(&f.router, Method::GET, "/v1/internal/secret", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, bytes) = call(
        &f.router,
        Method::GET,
        "/v1/internal/secret",
        Some(NODE),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = error_of(&bytes);
    assert_eq!(body.error, "not_found");
    assert!(
        body.detail.contains("/v1/internal/secret"),
        "{}",
        body.detail
    );
}

#[tokio::test]
async fn peer_routes_answer_peers() {
    let f = fixture();
    for (method, uri, body) in peer_routes() {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, bytes) = call(&f.router, method.clone(), &uri, Some(NODE), &body).await;
        let expected_missing_blob = uri == "/v1/blobs/abc" && method == Method::GET;
        if expected_missing_blob {
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
            assert_eq!(error_of(&bytes).error, "unknown_blob");
        } else {
            assert!(
                status.is_success(),
                "{method} {uri}: {status} {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    let (_, bytes) = call(
        &f.router,
        Method::POST,
        "/v1/internal/apps/web/numbers",
        Some(NODE),
        "",
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
        serde_json::json!({ "number": 7 })
    );
}

#[tokio::test]
async fn public_routes_need_no_token() {
    let f = fixture();
    for uri in ["/v1/health", "/v1/nodes", "/v1/openapi.json"] {
        let (status, _) = call(&f.router, Method::GET, uri, None, "").await;
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_a_json_body() {
    let f = fixture();
    let (status, bytes) = call(&f.router, Method::GET, "/v1/nothing-here", Some(USER), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = error_of(&bytes);
    assert_eq!(body.error, "not_found");
    assert!(body.detail.contains("/v1/nothing-here"), "{}", body.detail);

    // Including the paths the hand-kept 405 list used to miss (logs, internal).
    for (method, uri, token) in [
        (Method::PUT, "/v1/apps", USER),
        (Method::GET, "/v1/apps/web/deploys", USER),
        (Method::POST, "/v1/apps/web/logs", USER),
        (Method::DELETE, "/v1/nodes/n1/drain", USER),
        (Method::POST, "/v1/health", USER),
        (Method::GET, "/v1/internal/placements", NODE),
        (Method::DELETE, "/v1/blobs/abc", NODE),
    ] {
        let (status, bytes) = call(&f.router, method.clone(), uri, Some(token), "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        let body = error_of(&bytes);
        assert_eq!(body.error, "method_not_allowed", "{method} {uri}");
        assert!(body.detail.contains(uri), "{}", body.detail);
    }
}

#[tokio::test]
async fn errors_carry_their_code_and_status() {
    let f = fixture();
    let cases: Vec<(Method, &str, &str, &str, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/v1/apps/nope",
            USER,
            "",
            StatusCode::NOT_FOUND,
            "unknown_app",
        ),
        (
            Method::POST,
            "/v1/apps/web/scale",
            USER,
            "{not json",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/apps/web/scale",
            USER,
            r#"{"replicas":"many"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/apps/web/logs?tail=lots",
            USER,
            "",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        // A storage failure is a 500 with its reason, not a 404.
        (
            Method::GET,
            "/v1/blobs/bb",
            NODE,
            "",
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
        ),
        (
            Method::POST,
            "/v1/internal/placements/p1/stop",
            NODE,
            r#"{"placement_id":"p2","reason":"x"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (method, uri, token, body, status, code) in cases {
        let (got, bytes) = call(&f.router, method.clone(), uri, Some(token), body).await;
        assert_eq!(
            got,
            status,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let error = error_of(&bytes);
        assert_eq!(error.error, code, "{method} {uri}");
        assert!(!error.detail.is_empty());
    }
    let (_, bytes) = call(&f.router, Method::GET, "/v1/blobs/bb", Some(NODE), "").await;
    assert!(error_of(&bytes).detail.contains("disk on fire"));
}

#[tokio::test]
async fn oversized_bodies_are_refused_not_buffered() {
    let f = fixture();
    // The fixture's upload limit is 1,000 bytes.
    let (status, bytes) = call(
        &f.router,
        Method::POST,
        "/v1/apps/web/deploys",
        Some(USER),
        &"z".repeat(1001),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let body = error_of(&bytes);
    assert_eq!(body.error, "payload_too_large");
    assert!(
        body.detail.contains("--max-upload-bytes"),
        "{}",
        body.detail
    );
    assert!(f.node.deployed.lock().await.is_none());
    let leftovers = std::fs::read_dir(&f.node.upload_dir).unwrap().count();
    assert_eq!(leftovers, 0, "a refused upload leaves no file");

    let huge = format!(r#"{{"replicas":1,"pad":"{}"}}"#, "x".repeat(2 << 20));
    let (status, bytes) = call(
        &f.router,
        Method::POST,
        "/v1/apps/web/scale",
        Some(USER),
        &huge,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&bytes).error, "payload_too_large");
}

#[tokio::test]
async fn a_deploy_hands_the_service_the_saved_body_and_its_digest() {
    let f = fixture();
    let (status, bytes) = call(
        &f.router,
        Method::POST,
        "/v1/apps/web/deploys",
        Some(USER),
        "hello",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let accepted: DeployAccepted = serde_json::from_slice(&bytes).unwrap();
    let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    assert_eq!(accepted.sha256, sha);
    assert_eq!(
        *f.node.deployed.lock().await,
        Some(("web".into(), sha.into(), 5))
    );
    assert_eq!(
        std::fs::read_dir(&f.node.upload_dir).unwrap().count(),
        0,
        "the upload is removed once the service is done with it"
    );
}

/// Asked for NDJSON, a deploy streams its build's events and ends with `accepted`, or with
/// `failed` carrying the error's status and body, as the client reads it.
#[tokio::test]
async fn a_streamed_deploy_sends_the_build_events_then_the_outcome() {
    let f = fixture();
    for (app, ok) in [("web", true), ("unbuildable", false)] {
        let response = f
            .router
            .clone()
            .oneshot(
                Request::builder()
                    .method(Method::POST)
                    .uri(format!("/v1/apps/{app}/deploys"))
                    .header(header::AUTHORIZATION, format!("Bearer {USER}"))
                    .header(header::ACCEPT, "application/x-ndjson")
                    .body(Body::from("hello"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/x-ndjson"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let lines: Vec<proto::api::DeployProgress> = String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            proto::api::DeployProgress::Build {
                build: proto::build::BuildEvent::Step {
                    text: format!("building {app}")
                }
            }
        );
        match (&lines[1], ok) {
            (proto::api::DeployProgress::Accepted { accepted }, true) => {
                assert_eq!(accepted.app, app)
            }
            (proto::api::DeployProgress::Failed { status, error }, false) => {
                assert_eq!(*status, 422);
                assert_eq!(error.error, "build_failed");
                assert!(error.detail.contains("RUN false"), "{error:?}");
            }
            (other, _) => panic!("unexpected last line {other:?}"),
        }
        assert_eq!(lines.len(), 2);
    }
}

#[tokio::test]
async fn log_queries_parse_like_the_client_sends_them() {
    let f = fixture();
    for (query, expected) in [
        ("", "follow=false tail=100 previous=false"),
        ("?follow=true&tail=5", "follow=true tail=5 previous=false"),
        ("?follow&previous=1", "follow=true tail=100 previous=true"),
        (
            "?tail=999999&other=x",
            "follow=false tail=10000 previous=false",
        ),
    ] {
        let uri = format!("/v1/apps/web/logs{query}");
        let (status, bytes) = call(&f.router, Method::GET, &uri, Some(USER), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(String::from_utf8(bytes).unwrap(), format!("{expected}\n"));
    }
}

/// Paused clock: the 5 s request timeout passes at once, and the answer says what happened.
#[tokio::test(start_paused = true)]
async fn a_request_that_hangs_times_out_with_504() {
    let f = fixture();
    let (status, bytes) = call(&f.router, Method::GET, "/v1/apps/hangs", Some(USER), "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let body = error_of(&bytes);
    assert_eq!(body.error, "timeout");
    assert!(body.detail.contains("5s"), "{}", body.detail);
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let f = fixture();
    let (status, bytes) = call(&f.router, Method::GET, "/v1/openapi.json", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    // Node calls are signed, not bearer-authenticated; user calls may be rate limited.
    let node_mac = &doc["components"]["securitySchemes"]["node_mac"];
    assert_eq!(node_mac["type"], "apiKey");
    assert_eq!(node_mac["name"], "Authorization");
    assert!(
        node_mac["description"]
            .as_str()
            .unwrap()
            .contains("Stratus-Node-MAC v1")
    );
    assert_eq!(
        paths["/v1/internal/draining"]["put"]["security"][0]["node_mac"],
        serde_json::json!([])
    );
    assert!(paths["/v1/apps"]["get"]["responses"]["429"].is_object());
    assert!(
        paths["/v1/apps/{app}/scale"]["post"]["responses"]["429"]["headers"]["Retry-After"]
            .is_object()
    );
    assert!(paths["/v1/internal/draining"]["put"]["responses"]["429"].is_null());
    assert!(paths["/"]["get"]["responses"]["429"].is_null());
    let mut routes: Vec<(String, String)> = USER_ROUTES
        .iter()
        .map(|(method, uri, _)| (method.to_string(), uri.to_string()))
        .chain(
            peer_routes()
                .into_iter()
                .map(|(method, uri, _)| (method.to_string(), uri)),
        )
        .collect();
    routes.push(("POST".into(), "/v1/internal/placements".into()));
    routes.push(("POST".into(), "/v1/internal/builds".into()));
    routes.push(("GET".into(), "/v1/health".into()));
    routes.push(("GET".into(), "/v1/nodes".into()));
    routes.push(("GET".into(), "/".into()));
    routes.push(("GET".into(), "/dashboard/app.js".into()));
    for (method, uri) in routes {
        let path = uri.split('?').next().unwrap();
        let templated = path
            .replace("/web", "/{app}")
            .replace("/n1/", "/{node}/")
            .replace("/abc", "/{sha256}")
            .replace(&sha256_hex(b"zip"), "{sha256}")
            .replace("/p1/", "/{id}/")
            .replace("/builds/3/", "/builds/{release}/")
            .replace("/tenants/acme/", "/tenants/{tenant}/")
            .replace("/dashboard/app.js", "/dashboard/{file}");
        let entry = paths
            .get(&templated)
            .unwrap_or_else(|| panic!("{templated} is not in the document"));
        assert!(
            entry.get(method.to_lowercase()).is_some(),
            "{method} {templated} is not in the document"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "AppView",
        "ErrorBody",
        "PlacementRequest",
        "Manifest",
        "BuildRequest",
        "BuildEvent",
        "DeployProgress",
        "BuildsResponse",
        "Event",
        "Change",
        "ReplicasResponse",
        "ReplicaUsage",
        "NodeUsageReply",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} is missing");
    }
    // What `stratus ps` and `stratus doctor` read is documented, field by field.
    let properties = |schema: &str| schemas[schema]["properties"].as_object().unwrap().clone();
    assert!(properties("ReplicaView").contains_key("usage"));
    for field in [
        "started_at_ms",
        "uptime_ms",
        "restarts",
        "cpu_millis",
        "memory_bytes",
        "memory_limit_bytes",
        "note",
    ] {
        assert!(
            properties("ReplicaUsage").contains_key(field),
            "ReplicaUsage.{field}"
        );
    }
    assert!(properties("HealthResponse").contains_key("time_ms"));
}

#[tokio::test]
async fn head_of_a_blob_says_whether_this_node_holds_it() {
    // Peers ask before sending an image's layers: a 404 means "send it", nothing else does.
    let f = fixture();
    let (status, _) = call(&f.router, Method::HEAD, "/v1/blobs/abc", Some(NODE), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&f.router, Method::HEAD, "/v1/blobs/abc", Some(USER), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "peers only");
    let (status, _) = call(&f.router, Method::HEAD, "/v1/blobs/bb", Some(NODE), "").await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a broken store is not absence"
    );
}

async fn call_with(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn events_stream_as_server_sent_events_with_their_index_as_id() {
    let fixture = fixture();
    let (status, headers, body) = call_with(
        &fixture.router,
        request(Method::GET, "/v1/events", Some(USER), Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    assert!(
        body.contains("id: 1\nevent: node.joined\ndata: {"),
        "{body}"
    );
    assert!(body.contains("id: 2\nevent: app.scaled\ndata: {"), "{body}");
    assert!(body.contains(": heartbeat 2"), "{body}");
    // An EventSource that reconnects resumes after the last id it got.
    let mut resumed = request(Method::GET, "/v1/events", Some(USER), Body::empty());
    resumed
        .headers_mut()
        .insert("last-event-id", "1".parse().unwrap());
    let (_, _, body) = call_with(&fixture.router, resumed).await;
    assert!(!body.contains("node.joined"), "{body}");
    assert!(body.contains("app.scaled"), "{body}");
}

#[tokio::test]
async fn events_stream_as_ndjson_filtered_and_scoped_to_the_tenant() {
    let fixture = fixture();
    let ndjson = |uri: &str, token: &str| {
        let mut request = request(Method::GET, uri, Some(token), Body::empty());
        request
            .headers_mut()
            .insert(header::ACCEPT, "application/x-ndjson".parse().unwrap());
        request
    };
    let (status, headers, body) = call_with(
        &fixture.router,
        ndjson("/v1/events?follow=false&topic=app", USER),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-ndjson");
    let lines: Vec<EventLine> = body
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{body}");
    let EventLine::Event(event) = &lines[0] else {
        panic!("{body}")
    };
    assert_eq!(event.change.kind(), "app.scaled");
    // The fake's scaled event belongs to acme: a reader of acme sees it, with node events.
    let (_, _, body) = call_with(&fixture.router, ndjson("/v1/events?follow=false", READER)).await;
    assert_eq!(body.lines().count(), 2, "{body}");
}

#[tokio::test]
async fn an_event_index_no_longer_kept_is_gone_and_a_bad_topic_is_refused() {
    let fixture = fixture();
    let (status, body) = call(
        &fixture.router,
        Method::GET,
        "/v1/events?since=9",
        Some(USER),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(error_of(&body).error, "gone");
    let (status, body) = call(
        &fixture.router,
        Method::GET,
        "/v1/events?topic=nodes",
        Some(USER),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&body).detail.contains("topic"),
        "{}",
        error_of(&body).detail
    );
    let mut bad_id = request(Method::GET, "/v1/events", Some(USER), Body::empty());
    bad_id
        .headers_mut()
        .insert("last-event-id", "soon".parse().unwrap());
    let (status, _, _) = call_with(&fixture.router, bad_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_blocking_app_read_names_the_index_to_wait_on_next() {
    let fixture = fixture();
    let get = |uri: &str| request(Method::GET, uri, Some(USER), Body::empty());
    let (status, headers, _) = call_with(&fixture.router, get("/v1/apps/web")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-stratus-index"], "7");
    let (status, headers, _) =
        call_with(&fixture.router, get("/v1/apps/web?index=7&wait=2s")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-stratus-index"], "8");
    let (status, _, body) = call_with(&fixture.router, get("/v1/apps/web?index=7&wait=soon")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("30s"), "{body}");
    // Another tenant's (here: an unknown) app is not waited on.
    let (status, _, _) = call_with(&fixture.router, get("/v1/apps/nope?index=1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A node call's signature is good once, for that call only, and only now.
#[tokio::test]
async fn node_calls_are_refused_when_replayed_changed_stale_or_forged() {
    let f = fixture();
    let body = r#"{"node_id":"n1","draining":true}"#;
    let refused = |(status, bytes): (StatusCode, Vec<u8>), what: &str| {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        let error = error_of(&bytes);
        assert_eq!(error.error, "unauthorized", "{what}");
        error.detail
    };

    // Made once: accepted. Made again, byte for byte: a replay.
    let original = || signed_request(Method::PUT, "/v1/internal/draining", body.as_bytes(), None);
    let first = original();
    let mut replay = Request::builder()
        .method(Method::PUT)
        .uri("/v1/internal/draining")
        .body(Body::from(body))
        .unwrap();
    *replay.headers_mut() = first.headers().clone();
    let (status, _) = send(&f.router, first).await;
    assert_eq!(status, StatusCode::OK);
    let detail = refused(send(&f.router, replay).await, "replay");
    assert!(detail.contains("replay"), "{detail}");

    // The headers of one call on another: other body, path, method, query.
    let donor = original();
    let reuse = |method: Method, uri: &str, body: &str| {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_string()))
            .unwrap();
        *request.headers_mut() = donor.headers().clone();
        request
    };
    for (method, uri, other_body, what) in [
        (
            Method::PUT,
            "/v1/internal/draining",
            r#"{"node_id":"n1","draining":false}"#,
            "other body",
        ),
        (Method::PUT, "/v1/internal/tenancy", body, "other path"),
        (
            Method::PUT,
            "/v1/internal/draining?x=1",
            body,
            "other query",
        ),
    ] {
        refused(send(&f.router, reuse(method, uri, other_body)).await, what);
    }
    // A download's signature on an upload to the same path.
    let blob = format!("/v1/blobs/{}", sha256_hex(b""));
    let download = signed_request(Method::GET, &blob, b"", None);
    let mut upload = Request::builder()
        .method(Method::PUT)
        .uri(&blob)
        .body(Body::empty())
        .unwrap();
    *upload.headers_mut() = download.headers().clone();
    let detail = refused(send(&f.router, upload).await, "other method");
    assert!(detail.contains("signature"), "{detail}");
    // Signing the changed body's digest but sending the old one's: the body check.
    let lying = signed_request(
        Method::PUT,
        "/v1/internal/draining",
        body.as_bytes(),
        Some(&sha256_hex(b"something else")),
    );
    let detail = refused(send(&f.router, lying).await, "body not the signed one");
    assert!(detail.contains("body"), "{detail}");

    // Signed 31 s ago (or ahead).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for ts in [now - 31, now + 31] {
        let digest = sha256_hex(b"");
        let authorization = api::node_auth::sign(
            &node_key(),
            &CallParts {
                method: "GET",
                authority: NODE_HOST,
                path: "/v1/internal/audit",
                query: "",
                content_sha256: &digest,
            },
            ts,
            rand_nonce(),
        );
        let request = Request::builder()
            .uri("/v1/internal/audit")
            .header(header::HOST, NODE_HOST)
            .header(header::AUTHORIZATION, authorization)
            .header(CONTENT_SHA256, digest)
            .body(Body::empty())
            .unwrap();
        let detail = refused(send(&f.router, request).await, "stale");
        assert!(detail.contains("clock"), "{detail}");
    }

    // Signed with a key the node does not hold under the fixture's key id, or addressed
    // to another node.
    let forged = NodeSigner::new(MacKey::new("fixture1", [8; 32])).sign(&CallParts {
        method: "GET",
        authority: NODE_HOST,
        path: "/v1/internal/audit",
        query: "",
        content_sha256: &sha256_hex(b""),
    });
    let request = Request::builder()
        .uri("/v1/internal/audit")
        .header(header::HOST, NODE_HOST)
        .header(header::AUTHORIZATION, forged)
        .header(CONTENT_SHA256, sha256_hex(b""))
        .body(Body::empty())
        .unwrap();
    refused(send(&f.router, request).await, "forged");
    let mut elsewhere = signed_request(Method::GET, "/v1/internal/audit", b"", None);
    elsewhere
        .headers_mut()
        .insert(header::HOST, "node-2.test:7070".parse().unwrap());
    refused(send(&f.router, elsewhere).await, "another node's call");

    // The static bearer token of earlier versions opens nothing.
    let (status, _) = call(
        &f.router,
        Method::GET,
        "/v1/internal/audit",
        Some("322faf428565d0be4831b1ff6523acbb0b719d98155f6df2adc4c80c59a1dc8c"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

fn rand_nonce() -> [u8; 16] {
    rand::random()
}

/// A node call's body is read to be checked, so it is bounded like a JSON body.
#[tokio::test]
async fn an_oversized_node_call_body_is_refused() {
    let f = fixture();
    let huge = vec![b' '; (1 << 20) + 1];
    let (status, bytes) = send(
        &f.router,
        signed_request(Method::PUT, "/v1/internal/tenancy", &huge, None),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&bytes).error, "payload_too_large");
}

/// A streamed blob upload signs the digest its path names; any other is refused before the
/// body is read.
#[tokio::test]
async fn a_blob_upload_must_sign_the_digest_its_path_names() {
    let f = fixture();
    let digest = sha256_hex(b"zip");
    let uri = format!("/v1/blobs/{digest}");
    let (status, _) = send(&f.router, signed_request(Method::PUT, &uri, b"zip", None)).await;
    assert_eq!(status, StatusCode::CREATED);
    let other = sha256_hex(b"other");
    let (status, bytes) = send(
        &f.router,
        signed_request(Method::PUT, &uri, b"zip", Some(&other)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&bytes).detail.contains("body"));
}

/// Over the limit, a token gets 429 with Retry-After; each token has its own bucket, and
/// node calls have none.
#[tokio::test]
async fn rate_limits_are_per_token_and_spare_node_calls() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    let mut config = ApiConfig::new(dir.path().join("uploads"), 1000);
    config.rate_limit = api::RateLimit::new(1, 3);
    let router = api::router(f.node.clone(), config);
    let get = |token: &str| request(Method::GET, "/v1/apps", Some(token), Body::empty());
    for remaining in ["2", "1", "0"] {
        let response = router.clone().oneshot(get(USER)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-remaining"], remaining);
    }
    let response = router.clone().oneshot(get(USER)).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let error = error_of(&bytes);
    assert_eq!(error.error, "rate_limited");
    assert!(
        error.detail.contains("--api-rate-limit"),
        "{}",
        error.detail
    );
    // Another token of the same address is not held up...
    let response = router.clone().oneshot(get(READER)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // ...and neither are the nodes.
    for _ in 0..10 {
        let (status, _) = send(
            &router,
            signed_request(Method::GET, "/v1/internal/audit", b"", None),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // Calls with a wrong token pay from their address's bucket, and are limited too.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = router.clone().oneshot(get("wrong")).await.unwrap();
        statuses.push(response.status());
    }
    assert_eq!(statuses[..3], [StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn metrics_are_public_and_every_routed_request_is_timed_by_its_template() {
    let fixture = fixture();
    let (status, _) = call(&fixture.router, Method::GET, "/v1/apps/web", Some(USER), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&fixture.router, Method::GET, "/v1/apps/web", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = call_with(
        &fixture.router,
        request(Method::GET, "/metrics", None, Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let timed = fixture.node.timed.lock().await.clone();
    assert_eq!(
        timed,
        [
            "GET /v1/apps/{app} 200",
            "GET /v1/apps/{app} 401",
            "GET /metrics 200"
        ],
        "the template, never the app's name"
    );
    assert!(body.contains("fake_requests_timed 2"), "{body}");
}

#[tokio::test]
async fn the_dashboard_is_served_without_a_token_under_a_strict_policy() {
    let f = fixture();
    for (uri, media_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) =
            call_with(&f.router, request(Method::GET, uri, None, Body::empty())).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_eq!(headers[header::CONTENT_TYPE], media_type, "{uri}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{uri}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{uri}");
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{uri}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        // Revalidation is a 304 with no body.
        let etag = headers[header::ETAG].to_str().unwrap().to_string();
        let mut again = request(Method::GET, uri, None, Body::empty());
        again
            .headers_mut()
            .insert(header::IF_NONE_MATCH, etag.parse().unwrap());
        let (status, _, body) = call_with(&f.router, again).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{uri}");
        assert!(body.is_empty());
    }
    let (_, _, page) = call_with(&f.router, request(Method::GET, "/", None, Body::empty())).await;
    assert!(page.contains(r#"src="/dashboard/app.js""#), "{page}");
    let (status, bytes) = call(&f.router, Method::GET, "/dashboard/secrets.txt", None, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&bytes).error, "not_found");
    // Loading the page records nothing: it changes nothing.
    assert!(f.node.audited.lock().await.is_empty());
}
