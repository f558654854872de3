//! The API's router: one module per resource, merged here with the layers every request
//! goes through (tracing span, body limits and timeouts, the JSON 404 and 405).
//!
//! - [`apps`]: deploys, releases, scale, rollback, restart, logs (users);
//! - [`nodes`]: health, the node list, drain (users; health and the list are public);
//! - [`blobs`]: bundle copies between nodes (peers);
//! - [`internal`]: what nodes ask each other (peers).
//!
//! The peers' routers are nested behind [`require_peer`], as axum's `key-value-store`
//! example nests its admin router behind a bearer layer.

pub mod apps;
pub mod blobs;
pub mod internal;
pub mod nodes;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, OriginalUri};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use futures_util::StreamExt as _;
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::caller::require_peer;
use crate::error::ApiError;
use crate::service::{LineStream, Service};

/// JSON bodies are small; larger ones are refused, not buffered.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// Limits the router enforces. The defaults suit an agent; tests shorten them.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Where uploads are written while they stream in.
    pub upload_dir: PathBuf,
    /// Largest deploy or blob body.
    pub max_upload_bytes: u64,
    /// Longest a request may take before it has an answer (a streamed answer, like a
    /// followed log, may then go on).
    pub request_timeout: Duration,
    /// Longest an upload (deploy, blob copy) may take, body included.
    pub upload_timeout: Duration,
    /// Longest a request body may stall between two chunks.
    pub body_idle_timeout: Duration,
}

impl ApiConfig {
    pub fn new(upload_dir: PathBuf, max_upload_bytes: u64) -> ApiConfig {
        ApiConfig {
            upload_dir,
            max_upload_bytes,
            request_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(30 * 60),
            body_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What every handler gets: the agent's services and the limits.
pub struct ApiState<S> {
    pub service: Arc<S>,
    pub config: Arc<ApiConfig>,
}

impl<S> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        ApiState {
            service: self.service.clone(),
            config: self.config.clone(),
        }
    }
}

/// The whole API of one agent.
pub fn router<S: Service>(service: Arc<S>, config: ApiConfig) -> Router {
    let body_idle_timeout = config.body_idle_timeout;
    let state = ApiState {
        service,
        config: Arc::new(config),
    };
    let peers_only = middleware::from_fn_with_state(state.clone(), require_peer::<S>);
    Router::new()
        .merge(nodes::router::<S>(&state.config))
        .merge(apps::router::<S>(&state.config))
        .route("/v1/openapi.json", axum::routing::get(openapi_json))
        .nest(
            "/v1/blobs",
            blobs::router::<S>(&state.config)
                .fallback(not_found)
                .layer(peers_only.clone()),
        )
        .nest(
            "/v1/internal",
            internal::router::<S>(&state.config)
                .fallback(not_found)
                .layer(peers_only),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(RequestBodyTimeoutLayer::new(body_idle_timeout))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Bounds how long `route` may take to answer; a streamed answer (a followed log, a blob)
/// may go on after that. The limit is per route: uploads get longer than JSON calls.
fn deadline<S: Service>(
    route: MethodRouter<ApiState<S>>,
    limit: Duration,
) -> MethodRouter<ApiState<S>> {
    route.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |err: tower::BoxError| {
                timeout_error(err, limit)
            }))
            .timeout(limit),
    )
}

async fn timeout_error(err: tower::BoxError, limit: Duration) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout(limit)
    } else {
        ApiError::Internal(err.to_string())
    }
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(crate::openapi::build_docs())
}

// `OriginalUri`: inside a nested router the path has lost its prefix.
async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s, so a bad body gets the API's JSON
/// error like every other failure.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with [`ApiError`] rejections.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` with [`ApiError`] rejections.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Streams lines as a chunked `text/plain` body, each sent as soon as it exists.
fn lines_response(lines: LineStream) -> Response {
    let chunks = lines.map(|line| Ok::<_, Infallible>(Bytes::from(line + "\n")));
    let mut response = Body::from_stream(chunks).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
