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

use api::{
    ApiConfig, ApiError, AppsService, Authenticate, BlobsService, Caller, ErrorCode,
    InternalService, LineStream, LogQuery, NodesService, Upload,
};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use proto::api::{
    AppView, AppsResponse, ChangeAccepted, DeployAccepted, DrainReply, ErrorBody, GossipStats,
    HealthResponse, NodesResponse, PlacementReply, PlacementRequest, ReleasesResponse,
    RollbackRequest, ScaleRequest, StopRequest,
};
use proto::catalog::AppRecord;
use tower::ServiceExt as _;

const USER: &str = "user-token";
const NODE: &str = "node-token";
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

impl Authenticate for FakeNode {
    fn authenticate(&self, token: &str) -> Option<Caller> {
        match token {
            USER => Some(Caller::User),
            NODE => Some(Caller::Node),
            _ => None,
        }
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
    async fn apps(&self) -> AppsResponse {
        AppsResponse { apps: vec![] }
    }
    async fn app(&self, name: &str) -> Result<AppView, ApiError> {
        known(name).await.map(|()| app_view(name))
    }
    async fn destroy(&self, name: &str) -> Result<AppView, ApiError> {
        known(name).await.map(|()| app_view(name))
    }
    async fn deploy(
        &self,
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
    async fn builds(&self, app: &str) -> Result<proto::api::BuildsResponse, ApiError> {
        known(app).await?;
        Ok(proto::api::BuildsResponse {
            app: app.into(),
            builds: vec![],
        })
    }
    async fn build_log(&self, app: &str, release: u64) -> Result<LineStream, ApiError> {
        known(app).await?;
        Ok(Box::pin(futures_util::stream::iter(vec![format!(
            "log of release {release}"
        )])))
    }
    async fn releases(&self, app: &str) -> Result<ReleasesResponse, ApiError> {
        known(app).await?;
        Ok(ReleasesResponse {
            app: app.into(),
            releases: vec![],
        })
    }
    async fn scale(&self, app: &str, _: ScaleRequest) -> Result<ChangeAccepted, ApiError> {
        known(app).await.map(|()| accepted(app))
    }
    async fn rollback(&self, app: &str, _: RollbackRequest) -> Result<ChangeAccepted, ApiError> {
        known(app).await.map(|()| accepted(app))
    }
    async fn restart(&self, app: &str) -> Result<ChangeAccepted, ApiError> {
        known(app).await.map(|()| accepted(app))
    }
    async fn app_logs(&self, app: &str, query: LogQuery) -> Result<LineStream, ApiError> {
        known(app).await?;
        let lines = vec![format!(
            "follow={} tail={} previous={}",
            query.follow, query.tail, query.previous
        )];
        Ok(Box::pin(futures_util::stream::iter(lines)))
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
    });
    let mut config = ApiConfig::new(node.upload_dir.clone(), 1000);
    config.request_timeout = Duration::from_secs(5);
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
    let response = router
        .clone()
        .oneshot(request(method, uri, token, Body::from(body.to_string())))
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
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
    ("GET", "/v1/apps/web/builds", ""),
    ("GET", "/v1/apps/web/builds/3/log", ""),
    ("POST", "/v1/nodes/n1/drain", ""),
    ("POST", "/v1/nodes/n1/undrain", ""),
];

/// Every node-to-node route, with a body it accepts.
fn peer_routes() -> Vec<(&'static str, String, String)> {
    let record = serde_json::json!({
        "name": "web", "stamp": {"wall_ms": 1, "counter": 0, "node_id": "n1"},
        "deleted": true, "release": null, "replicas": 0
    });
    vec![
        ("GET", "/v1/blobs/abc".into(), String::new()),
        ("PUT", "/v1/blobs/abc".into(), "zip".into()),
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

#[tokio::test]
async fn peer_routes_need_the_node_token_even_where_nothing_is_routed() {
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
    for (method, uri) in routes {
        let templated = uri
            .replace("/web", "/{app}")
            .replace("/n1/", "/{node}/")
            .replace("/abc", "/{sha256}")
            .replace("/p1/", "/{id}/")
            .replace("/builds/3/", "/builds/{release}/");
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
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} is missing");
    }
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
