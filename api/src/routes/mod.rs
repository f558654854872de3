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
pub mod shared;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri};
use axum::http::Method;
use axum::middleware;
use axum::response::IntoResponse;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::caller::require_peer;
use crate::error::ApiError;
use crate::service::Service;
use crate::state::{ApiConfig, ApiState, MAX_JSON_BODY};

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
