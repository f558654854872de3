//! `/metrics`: the agent's Prometheus page (public: its labels are route templates and
//! fixed words, never an app's or a tenant's name), and the layer that times every
//! routed request by its template.

use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::time::Instant;

use super::shared::deadline;
use crate::service::Service;
use crate::state::{ApiConfig, ApiState};

pub fn router<S: Service>(config: &ApiConfig) -> Router<ApiState<S>> {
    Router::new().route(
        "/metrics",
        deadline(get(metrics::<S>), config.request_timeout),
    )
}

/// The agent's metrics in the Prometheus text format: gossip, catalog, placements,
/// reconciler actions, replicas, builds, API requests and event stream readers.
#[utoipa::path(get, path = "/metrics", tag = "nodes",
    responses((status = 200, content_type = "text/plain", body = String,
        description = "Prometheus text format 0.0.4")))]
async fn metrics<S: Service>(State(state): State<ApiState<S>>) -> Response {
    let mut response = state.service.metrics().await.into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Times a routed request until its answer's head (a streamed body goes on after).
pub async fn observe<S: Service>(
    State(state): State<ApiState<S>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed: Duration = started.elapsed();
    state
        .service
        .observe_request(&route, method.as_str(), response.status().as_u16(), elapsed);
    response
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics))]
pub struct MetricsApi;
