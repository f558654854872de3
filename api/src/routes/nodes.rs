//! `/v1/health` and `/v1/nodes`: the node and the cluster as it sees them. Health and the
//! node list are public (they take no caller); drains take the
//! [`ClusterAdmin`].

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use proto::api::{DrainReply, ErrorBody, HealthResponse, NodesResponse};

use super::shared::{Json, Path, deadline};
use crate::caller::ClusterAdmin;
use crate::error::ApiError;
use crate::service::Service;
use crate::state::{ApiConfig, ApiState};

pub fn router<S: Service>(config: &ApiConfig) -> Router<ApiState<S>> {
    let answer = config.request_timeout;
    Router::new()
        .route("/v1/health", deadline(get(health::<S>), answer))
        .route("/v1/nodes", deadline(get(list::<S>), answer))
        .route("/v1/nodes/{node}/drain", deadline(post(drain::<S>), answer))
        .route(
            "/v1/nodes/{node}/undrain",
            deadline(post(undrain::<S>), answer),
        )
}

/// This node's own checks: catalog writes, the container runtime and gossip peers.
#[utoipa::path(get, path = "/v1/health", tag = "nodes",
    responses((status = 200, body = HealthResponse)))]
async fn health<S: Service>(State(state): State<ApiState<S>>) -> Json<HealthResponse> {
    Json(state.service.health().await)
}

/// Every node as this one sees it through gossip.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    responses((status = 200, body = NodesResponse)))]
async fn list<S: Service>(State(state): State<ApiState<S>>) -> Json<NodesResponse> {
    Json(state.service.nodes().await)
}

/// Moves every replica off a node, one at a time, and places nothing new there.
#[utoipa::path(post, path = "/v1/nodes/{node}/drain", tag = "nodes",
    params(("node" = String, Path, description = "node id")),
    responses(
        (status = 200, body = DrainReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn drain<S: Service>(
    State(state): State<ApiState<S>>,
    _admin: ClusterAdmin,
    Path(node): Path<String>,
) -> Result<Json<DrainReply>, ApiError> {
    Ok(Json(state.service.drain(&node, true).await?))
}

/// Lets a drained node take replicas again.
#[utoipa::path(post, path = "/v1/nodes/{node}/undrain", tag = "nodes",
    params(("node" = String, Path, description = "node id")),
    responses(
        (status = 200, body = DrainReply),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn undrain<S: Service>(
    State(state): State<ApiState<S>>,
    _admin: ClusterAdmin,
    Path(node): Path<String>,
) -> Result<Json<DrainReply>, ApiError> {
    Ok(Json(state.service.drain(&node, false).await?))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(health, list, drain, undrain))]
pub struct NodesApi;
