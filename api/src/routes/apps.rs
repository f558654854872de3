//! `/v1/apps`: what developers do with their apps. Every handler takes [`User`].

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use proto::api::{
    AppView, AppsResponse, BuildsResponse, ChangeAccepted, DeployAccepted, DeployProgress,
    ErrorBody, ReleasesResponse, RollbackRequest, ScaleRequest,
};

use futures_util::StreamExt as _;

use super::shared::{Json, Path, Query, deadline, lines_response};
use crate::caller::User;
use crate::error::ApiError;
use crate::service::{LogQuery, Service};
use crate::state::{ApiConfig, ApiState};
use crate::upload::save_body;

pub fn router<S: Service>(config: &ApiConfig) -> Router<ApiState<S>> {
    let answer = config.request_timeout;
    Router::new()
        .route("/v1/apps", deadline(get(list::<S>), answer))
        .route(
            "/v1/apps/{app}",
            deadline(get(show::<S>).delete(destroy::<S>), answer),
        )
        .route(
            "/v1/apps/{app}/deploys",
            deadline(post(deploy::<S>), config.upload_timeout),
        )
        .route(
            "/v1/apps/{app}/releases",
            deadline(get(releases::<S>), answer),
        )
        .route("/v1/apps/{app}/scale", deadline(post(scale::<S>), answer))
        .route(
            "/v1/apps/{app}/rollback",
            deadline(post(rollback::<S>), answer),
        )
        .route(
            "/v1/apps/{app}/restart",
            deadline(post(restart::<S>), answer),
        )
        .route("/v1/apps/{app}/logs", deadline(get(logs::<S>), answer))
        .route("/v1/apps/{app}/builds", deadline(get(builds::<S>), answer))
        .route(
            "/v1/apps/{app}/builds/{release}/log",
            deadline(get(build_log::<S>), answer),
        )
}

/// Every app with its release and replica counts.
#[utoipa::path(get, path = "/v1/apps", tag = "apps",
    responses(
        (status = 200, body = AppsResponse),
        (status = 401, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn list<S: Service>(State(state): State<ApiState<S>>, _user: User) -> Json<AppsResponse> {
    Json(state.service.apps().await)
}

/// One app: its release and where every replica runs.
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 200, body = AppView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn show<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path(app): Path<String>,
) -> Result<Json<AppView>, ApiError> {
    Ok(Json(state.service.app(&app).await?))
}

/// Stops every replica of an app and forgets it.
#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 200, body = AppView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn destroy<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path(app): Path<String>,
) -> Result<Json<AppView>, ApiError> {
    Ok(Json(state.service.destroy(&app).await?))
}

/// Deploys a zipped app folder (with its `stratus.toml`). The body is streamed to disk and
/// hashed; the answer comes once the release is built (when its app has a builder),
/// recorded, and its bundle and image are held by enough nodes. With
/// `Accept: application/x-ndjson` the answer is 200 at once and a stream of
/// [`DeployProgress`] lines: the build as it happens, then `accepted` or `failed`.
#[utoipa::path(post, path = "/v1/apps/{app}/deploys", tag = "apps",
    params(("app" = String, Path, description = "app name; must match the manifest's")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "the zipped app folder, as `stratus deploy` packs it"),
    responses(
        (status = 202, body = DeployAccepted),
        (status = 200, body = DeployProgress, content_type = "application/x-ndjson",
            description = "asked for with Accept: application/x-ndjson: one JSON object a line"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn deploy<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let upload = save_body(
        body,
        &state.config.upload_dir,
        state.config.max_upload_bytes,
    )
    .await?;
    let streamed = headers
        .get(ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains(NDJSON));
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    // The deploy runs on its own task: a client that goes away does not cut a build or a
    // replication short.
    let service = state.service.clone();
    let deploying = tokio::spawn(async move { service.deploy(&app, upload, events).await });
    if !streamed {
        let accepted = joined(deploying.await)?;
        return Ok((StatusCode::ACCEPTED, Json(accepted)).into_response());
    }
    let events = futures_util::stream::unfold(received, |mut received| async move {
        let build = received.recv().await?;
        Some((progress_line(&DeployProgress::Build { build }), received))
    });
    let last = futures_util::stream::once(async move {
        progress_line(&match joined(deploying.await) {
            Ok(accepted) => DeployProgress::Accepted {
                accepted: Box::new(accepted),
            },
            Err(err) => DeployProgress::Failed {
                status: err.status().as_u16(),
                error: err.body(),
            },
        })
    });
    let lines = events.chain(last);
    let mut response = lines_response(Box::pin(lines));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}

const NDJSON: &str = "application/x-ndjson";

fn joined<T>(result: Result<Result<T, ApiError>, tokio::task::JoinError>) -> Result<T, ApiError> {
    result.map_err(|err| ApiError::Internal(format!("the deploy task failed: {err}")))?
}

fn progress_line(progress: &DeployProgress) -> String {
    serde_json::to_string(progress).unwrap_or_else(|err| {
        format!(
            r#"{{"event":"failed","status":500,"error":{{"error":"internal","detail":"{err}"}}}}"#
        )
    })
}

/// An app's last builds, newest first: release, builder, node, duration, cache, result.
#[utoipa::path(get, path = "/v1/apps/{app}/builds", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 200, body = BuildsResponse),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn builds<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path(app): Path<String>,
) -> Result<Json<BuildsResponse>, ApiError> {
    Ok(Json(state.service.builds(&app).await?))
}

/// The whole output of one build, as text.
#[utoipa::path(get, path = "/v1/apps/{app}/builds/{release}/log", tag = "apps",
    params(
        ("app" = String, Path, description = "app name"),
        ("release" = u64, Path, description = "the release the build made"),
    ),
    responses(
        (status = 200, body = String, content_type = "text/plain"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn build_log<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path((app, release)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    Ok(lines_response(
        state.service.build_log(&app, release).await?,
    ))
}

/// An app's releases, newest first, with the failed ones and why.
#[utoipa::path(get, path = "/v1/apps/{app}/releases", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 200, body = ReleasesResponse),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn releases<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path(app): Path<String>,
) -> Result<Json<ReleasesResponse>, ApiError> {
    Ok(Json(state.service.releases(&app).await?))
}

/// Sets how many replicas run.
#[utoipa::path(post, path = "/v1/apps/{app}/scale", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    request_body = ScaleRequest,
    responses(
        (status = 202, body = ChangeAccepted),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn scale<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path(app): Path<String>,
    Json(request): Json<ScaleRequest>,
) -> Result<(StatusCode, Json<ChangeAccepted>), ApiError> {
    let accepted = state.service.scale(&app, request).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Goes back to an earlier release (a new release copying it), one replica at a time.
#[utoipa::path(post, path = "/v1/apps/{app}/rollback", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    request_body = RollbackRequest,
    responses(
        (status = 202, body = ChangeAccepted),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn rollback<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path(app): Path<String>,
    Json(request): Json<RollbackRequest>,
) -> Result<(StatusCode, Json<ChangeAccepted>), ApiError> {
    let accepted = state.service.rollback(&app, request).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Replaces every replica with a fresh one, one at a time.
#[utoipa::path(post, path = "/v1/apps/{app}/restart", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 202, body = ChangeAccepted),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn restart<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path(app): Path<String>,
) -> Result<(StatusCode, Json<ChangeAccepted>), ApiError> {
    let accepted = state.service.restart(&app).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// The output of every replica, each line prefixed with its replica; with `follow`, new
/// lines as they are written.
#[utoipa::path(get, path = "/v1/apps/{app}/logs", tag = "apps",
    params(("app" = String, Path, description = "app name"), LogQuery),
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn logs<S: Service>(
    State(state): State<ApiState<S>>,
    _user: User,
    Path(app): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    Ok(lines_response(state.service.app_logs(&app, query).await?))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list, show, destroy, deploy, builds, build_log, releases, scale, rollback, restart, logs
))]
pub struct AppsApi;
