//! `/v1/internal`: what the nodes ask each other, nested behind the node-call layer (signed calls only).

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post, put};
use proto::api::BuildRequest;
use proto::api::{
    AuditRecord, DrainReply, ErrorBody, HeldReply, NodeUsageReply, PlacementReply,
    PlacementRequest, ReserveQuota, ReservedNumber, StopRequest, StoppingReply,
};
use proto::build::BuildEvent;
use proto::catalog::AppRecord;
use proto::tenancy::TenancyRecord;

use super::shared::{Json, Path, Query, deadline, lines_response};
use crate::error::ApiError;
use crate::service::{AuditQuery, LogQuery, Service};
use crate::state::{ApiConfig, ApiState};

pub fn router<S: Service>(config: &ApiConfig) -> Router<ApiState<S>> {
    let answer = config.request_timeout;
    Router::new()
        .route("/apps/{app}", deadline(put(hold_record::<S>), answer))
        .route("/tenancy", deadline(put(hold_tenancy::<S>), answer))
        .route("/audit", deadline(get(local_audit::<S>), answer))
        .route(
            "/tenants/{tenant}/reservations",
            deadline(post(reserve_quota::<S>), answer),
        )
        .route(
            "/apps/{app}/numbers",
            deadline(post(reserve_number::<S>), answer),
        )
        .route(
            "/apps/{app}/previous-logs",
            deadline(get(previous_logs::<S>), answer),
        )
        .route(
            "/replicas/{id}/logs",
            deadline(get(replica_logs::<S>), answer),
        )
        .route("/apps/{app}/usage", deadline(get(usage::<S>), answer))
        .route("/builds", deadline(post(build::<S>), answer))
        .route("/placements", deadline(post(place::<S>), answer))
        .route("/placements/{id}/stop", deadline(post(stop::<S>), answer))
        .route("/draining", deadline(put(set_draining::<S>), answer))
}

/// Keep (persist and publish) an app record: this node is one of its keepers.
#[utoipa::path(put, path = "/v1/internal/apps/{app}", tag = "internal",
    params(("app" = String, Path, description = "app name")),
    request_body = AppRecord,
    responses(
        (status = 200, body = HeldReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 500, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn hold_record<S: Service>(
    State(state): State<ApiState<S>>,
    Path(app): Path<String>,
    Json(record): Json<AppRecord>,
) -> Result<Json<HeldReply>, ApiError> {
    if record.name != app {
        return Err(ApiError::BadRequest(format!(
            "the URL names app {app}, the record {}",
            record.name
        )));
    }
    state.service.hold_record(record).await?;
    Ok(Json(HeldReply { held: true }))
}

/// Keep (persist and publish) a tenant or token record: this node is one of its keepers.
#[utoipa::path(put, path = "/v1/internal/tenancy", tag = "internal",
    request_body = TenancyRecord,
    responses(
        (status = 200, body = HeldReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 500, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn hold_tenancy<S: Service>(
    State(state): State<ApiState<S>>,
    Json(record): Json<TenancyRecord>,
) -> Result<Json<HeldReply>, ApiError> {
    state.service.hold_tenancy(record).await?;
    Ok(Json(HeldReply { held: true }))
}

/// Reserve quota for an app of a tenant: this node is the tenant's quota keeper.
#[utoipa::path(post, path = "/v1/internal/tenants/{tenant}/reservations", tag = "internal",
    params(("tenant" = String, Path, description = "tenant name")),
    request_body = ReserveQuota,
    responses(
        (status = 200, body = HeldReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn reserve_quota<S: Service>(
    State(state): State<ApiState<S>>,
    Path(tenant): Path<String>,
    Json(request): Json<ReserveQuota>,
) -> Result<Json<HeldReply>, ApiError> {
    state.service.reserve_quota(&tenant, request).await?;
    Ok(Json(HeldReply { held: true }))
}

/// This node's audit records matching the query, oldest first.
#[utoipa::path(get, path = "/v1/internal/audit", tag = "internal",
    params(AuditQuery),
    responses(
        (status = 200, body = Vec<AuditRecord>),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 500, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn local_audit<S: Service>(
    State(state): State<ApiState<S>>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    Ok(Json(state.service.local_audit(query).await?))
}

/// Build a release on this node: its events as newline-delimited JSON, the last one
/// `finished` (with the image, or the error).
#[utoipa::path(post, path = "/v1/internal/builds", tag = "internal",
    request_body = BuildRequest,
    responses(
        (status = 200, body = BuildEvent, content_type = "application/x-ndjson",
            description = "one event a line"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn build<S: Service>(
    State(state): State<ApiState<S>>,
    Json(request): Json<BuildRequest>,
) -> Result<Response, ApiError> {
    Ok(lines_response(state.service.build(request).await?))
}

/// The next release number of an app, reserved by its first keeper.
#[utoipa::path(post, path = "/v1/internal/apps/{app}/numbers", tag = "internal",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 200, body = ReservedNumber),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn reserve_number<S: Service>(
    State(state): State<ApiState<S>>,
    Path(app): Path<String>,
) -> Result<Json<ReservedNumber>, ApiError> {
    let number = state.service.reserve_release_number(&app).await?;
    Ok(Json(ReservedNumber { number }))
}

/// The kept output of an app's stopped replicas on this node.
#[utoipa::path(get, path = "/v1/internal/apps/{app}/previous-logs", tag = "internal",
    params(("app" = String, Path, description = "app name"), LogQuery),
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn previous_logs<S: Service>(
    State(state): State<ApiState<S>>,
    Path(app): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    Ok(lines_response(
        state.service.previous_logs(&app, query).await?,
    ))
}

/// The output of one replica this node runs.
#[utoipa::path(get, path = "/v1/internal/replicas/{id}/logs", tag = "internal",
    params(("id" = String, Path, description = "placement id"), LogQuery),
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn replica_logs<S: Service>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    Ok(lines_response(
        state.service.replica_logs(&id, query).await?,
    ))
}

/// What the replicas of an app that this node runs use, and how long they have run, by
/// placement id (none: it runs none).
#[utoipa::path(get, path = "/v1/internal/apps/{app}/usage", tag = "internal",
    params(("app" = String, Path, description = "app name")),
    responses(
        (status = 200, body = NodeUsageReply),
        (status = 401, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn usage<S: Service>(
    State(state): State<ApiState<S>>,
    Path(app): Path<String>,
) -> Json<NodeUsageReply> {
    Json(state.service.replica_usage(&app).await)
}

/// Run one replica here, if it fits. Idempotent by placement id.
#[utoipa::path(post, path = "/v1/internal/placements", tag = "internal",
    request_body = PlacementRequest,
    responses(
        (status = 200, body = PlacementReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn place<S: Service>(
    State(state): State<ApiState<S>>,
    Json(request): Json<PlacementRequest>,
) -> Result<Json<PlacementReply>, ApiError> {
    Ok(Json(state.service.place(request).await?))
}

/// Stop one replica this node runs, gracefully (out of the routes first).
#[utoipa::path(post, path = "/v1/internal/placements/{id}/stop", tag = "internal",
    params(("id" = String, Path, description = "placement id")),
    request_body = StopRequest,
    responses(
        (status = 200, body = StoppingReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn stop<S: Service>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    Json(stop): Json<StopRequest>,
) -> Result<Json<StoppingReply>, ApiError> {
    if stop.placement_id != id {
        return Err(ApiError::BadRequest(format!(
            "the URL names placement {id}, the body {}",
            stop.placement_id
        )));
    }
    state.service.stop_replica(stop).await?;
    Ok(Json(StoppingReply { stopping: true }))
}

/// Drain (or undrain) this node.
#[utoipa::path(put, path = "/v1/internal/draining", tag = "internal",
    request_body = DrainReply,
    responses(
        (status = 200, body = DrainReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 500, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn set_draining<S: Service>(
    State(state): State<ApiState<S>>,
    Json(request): Json<DrainReply>,
) -> Result<Json<DrainReply>, ApiError> {
    Ok(Json(state.service.set_draining(request.draining).await?))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    hold_record,
    hold_tenancy,
    local_audit,
    reserve_quota,
    build,
    reserve_number,
    previous_logs,
    replica_logs,
    usage,
    place,
    stop,
    set_draining
))]
pub struct InternalApi;
