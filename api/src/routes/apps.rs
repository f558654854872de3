//! `/v1/apps`: what developers do with their apps. Every handler takes [`User`].

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use proto::api::{
    AppView, AppsResponse, ChangeAccepted, DeployAccepted, ErrorBody, ReleasesResponse,
    RollbackRequest, ScaleRequest,
};

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
/// hashed; the answer comes once the release is recorded and its bundle held by enough
/// nodes.
#[utoipa::path(post, path = "/v1/apps/{app}/deploys", tag = "apps",
    params(("app" = String, Path, description = "app name; must match the manifest's")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "the zipped app folder, as `stratus deploy` packs it"),
    responses(
        (status = 202, body = DeployAccepted),
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
    body: Body,
) -> Result<(StatusCode, Json<DeployAccepted>), ApiError> {
    let upload = save_body(
        body,
        &state.config.upload_dir,
        state.config.max_upload_bytes,
    )
    .await?;
    let accepted = state.service.deploy(&app, upload).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
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
#[openapi(paths(list, show, destroy, deploy, releases, scale, rollback, restart, logs))]
pub struct AppsApi;
