//! `/v1/apps`: what developers do with their apps. Reads take a [`Reader`], changes a
//! [`Deployer`]; the service confines both to the caller's tenant.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use proto::api::{
    AppView, AppsResponse, BuildsResponse, ChangeAccepted, ConfigChange, ConfigView,
    DeployAccepted, DeployProgress, ErrorBody, ReleasesResponse, ReplicasResponse, RollbackRequest,
    ScaleRequest,
};

use futures_util::StreamExt as _;

use super::shared::{Json, NDJSON, Path, Query, deadline, lines_response, wants_ndjson};
use crate::caller::{Deployer, Reader};
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
            deadline(get(show::<S>), answer + MAX_WAIT)
                .merge(deadline(delete(destroy::<S>), answer)),
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
        .route(
            "/v1/apps/{app}/replicas",
            deadline(get(replicas::<S>), answer),
        )
        .route("/v1/apps/{app}/builds", deadline(get(builds::<S>), answer))
        .route(
            "/v1/apps/{app}/config",
            deadline(get(show_config::<S>).patch(change_config::<S>), answer),
        )
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
        (status = 403, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn list<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
) -> Json<AppsResponse> {
    Json(state.service.apps(&caller).await)
}

/// Longest a blocking app read may wait, and how long it waits when `wait` is not given.
const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);

/// The answer's header naming the index of the newest event about the app.
pub const INDEX_HEADER: &str = "x-stratus-index";

/// `?index=&wait=` of the app read: Consul's blocking query.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// Answer once the app has changed after this index (the `X-Stratus-Index` of the last
    /// answer), or when `wait` ends; an index this node never gave out (it restarted)
    /// answers at once.
    index: Option<u64>,
    /// How long to wait at most with `index`: `30s`, `2m` (default 5m, at most 10m).
    wait: Option<String>,
}

/// One app: its release and where every replica runs. With `index`, a blocking read: the
/// answer comes when the app changes or `wait` ends, and `X-Stratus-Index` is the index
/// to pass next.
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "app name"), WaitQuery),
    responses(
        (status = 200, body = AppView,
            headers(("x-stratus-index" = u64, description = "the newest event index about the app"))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn show<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
    Path(app): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let wait = match &query.wait {
        None => DEFAULT_WAIT,
        Some(text) => humantime::parse_duration(text)
            .map_err(|err| {
                ApiError::BadRequest(format!(
                    "wait={text:?} is not a duration ({err}): use 30s or 2m"
                ))
            })?
            .min(MAX_WAIT),
    };
    // Seen first: a tenant learns nothing by waiting on another tenant's app.
    state.service.app(&caller, &app).await?;
    let index = state.service.app_index(&app, query.index, wait).await;
    let view = state.service.app(&caller, &app).await?;
    let mut response = Json(view).into_response();
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
    Ok(response)
}

/// Stops every replica of an app and forgets it.
#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 200, body = AppView),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn destroy<S: Service>(
    State(state): State<ApiState<S>>,
    Deployer(caller): Deployer,
    Path(app): Path<String>,
) -> Result<Json<AppView>, ApiError> {
    Ok(Json(state.service.destroy(&caller, &app).await?))
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
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn deploy<S: Service>(
    State(state): State<ApiState<S>>,
    Deployer(caller): Deployer,
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
    let streamed = wants_ndjson(&headers);
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    // The deploy runs on its own task: a client that goes away does not cut a build or a
    // replication short.
    let service = state.service.clone();
    let deploying =
        tokio::spawn(async move { service.deploy(&caller, &app, upload, events).await });
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
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn builds<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
    Path(app): Path<String>,
) -> Result<Json<BuildsResponse>, ApiError> {
    Ok(Json(state.service.builds(&caller, &app).await?))
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
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn build_log<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
    Path((app, release)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    Ok(lines_response(
        state.service.build_log(&caller, &app, release).await?,
    ))
}

/// An app's releases, newest first, with the failed ones and why.
#[utoipa::path(get, path = "/v1/apps/{app}/releases", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 200, body = ReleasesResponse),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn releases<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
    Path(app): Path<String>,
) -> Result<Json<ReleasesResponse>, ApiError> {
    Ok(Json(state.service.releases(&caller, &app).await?))
}

/// Sets how many replicas run.
#[utoipa::path(post, path = "/v1/apps/{app}/scale", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    request_body = ScaleRequest,
    responses(
        (status = 202, body = ChangeAccepted),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn scale<S: Service>(
    State(state): State<ApiState<S>>,
    Deployer(caller): Deployer,
    Path(app): Path<String>,
    Json(request): Json<ScaleRequest>,
) -> Result<(StatusCode, Json<ChangeAccepted>), ApiError> {
    let accepted = state.service.scale(&caller, &app, request).await?;
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
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn rollback<S: Service>(
    State(state): State<ApiState<S>>,
    Deployer(caller): Deployer,
    Path(app): Path<String>,
    Json(request): Json<RollbackRequest>,
) -> Result<(StatusCode, Json<ChangeAccepted>), ApiError> {
    let accepted = state.service.rollback(&caller, &app, request).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Replaces every replica with a fresh one, one at a time.
#[utoipa::path(post, path = "/v1/apps/{app}/restart", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 202, body = ChangeAccepted),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn restart<S: Service>(
    State(state): State<ApiState<S>>,
    Deployer(caller): Deployer,
    Path(app): Path<String>,
) -> Result<(StatusCode, Json<ChangeAccepted>), ApiError> {
    let accepted = state.service.restart(&caller, &app).await?;
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
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn logs<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
    Path(app): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    Ok(lines_response(
        state.service.app_logs(&caller, &app, query).await?,
    ))
}

/// Every replica with how long it has run, its restarts and the CPU and memory it uses
/// (`stratus ps`): the answering node asks each node that runs one, so this takes about a
/// second, and a node that does not answer leaves a `note` instead of figures.
#[utoipa::path(get, path = "/v1/apps/{app}/replicas", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 200, body = ReplicasResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn replicas<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
    Path(app): Path<String>,
) -> Result<Json<ReplicasResponse>, ApiError> {
    Ok(Json(state.service.replicas(&caller, &app).await?))
}

/// `?show=true` of the config read.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ConfigQuery {
    /// Reveal the values (needs the deploy role).
    #[serde(default)]
    show: bool,
}

/// The app's config var names; their values with `?show=true` and the deploy role.
#[utoipa::path(get, path = "/v1/apps/{app}/config", tag = "apps",
    params(("app" = String, Path, description = "app name"), ConfigQuery),
    responses(
        (status = 200, body = ConfigView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn show_config<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
    Path(app): Path<String>,
    Query(query): Query<ConfigQuery>,
) -> Result<Json<ConfigView>, ApiError> {
    if query.show && caller.role() < proto::tenancy::Role::Deploy {
        return Err(ApiError::Forbidden {
            needed: "deploy",
            role: caller.role().as_str(),
        });
    }
    Ok(Json(state.service.config(&caller, &app, query.show).await?))
}

/// Sets and unsets config vars: one new release, rolled out like a restart.
#[utoipa::path(patch, path = "/v1/apps/{app}/config", tag = "apps",
    params(("app" = String, Path, description = "app name")),
    request_body = ConfigChange,
    responses(
        (status = 202, body = ChangeAccepted),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn change_config<S: Service>(
    State(state): State<ApiState<S>>,
    Deployer(caller): Deployer,
    Path(app): Path<String>,
    Json(change): Json<ConfigChange>,
) -> Result<(StatusCode, Json<ChangeAccepted>), ApiError> {
    let accepted = state.service.change_config(&caller, &app, change).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list,
    show,
    destroy,
    deploy,
    builds,
    build_log,
    releases,
    scale,
    rollback,
    restart,
    logs,
    replicas,
    show_config,
    change_config
))]
pub struct AppsApi;
