//! The API's router: one module per resource, merged here with the layers every request
//! goes through (tracing span, body limits and timeouts, the JSON 404 and 405).
//!
//! - [`apps`]: deploys, releases, scale, rollback, restart, logs (users);
//! - [`dashboard`]: the web page at `/` and its script and styles (public: the page holds
//!   no data, it calls the other routes with the token it is given);
//! - [`events`]: the event stream (users);
//! - [`metrics`]: the agent's Prometheus page, and the layer timing every routed request;
//! - [`rate_limited`]: the rate-limit layer of the user routers;
//! - [`nodes`]: health, the node list, drain (users; health and the list are public);
//! - [`audit`]: the audit log's read, and the layer that records mutating calls;
//! - [`tenants`]: who calls, tenants and quotas (the administrator), tokens (tenant admins);
//! - [`blobs`]: bundle copies between nodes (peers);
//! - [`internal`]: what nodes ask each other (peers).
//!
//! The peers' routers are nested behind [`require_peer`], as axum's `key-value-store`
//! example nests its admin router behind a bearer layer; the user routers sit behind the
//! rate limit ([`crate::rate_limit`]), the peers' and the dashboard's files do not.

pub mod apps;
pub mod audit;
pub mod blobs;
pub mod dashboard;
pub mod events;
pub mod internal;
pub mod metrics;
pub mod nodes;
pub mod rate_limited;
pub mod shared;
pub mod tenants;

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
use crate::rate_limit::Limiter;
use crate::service::Service;
use crate::state::{ApiConfig, ApiState, MAX_JSON_BODY};

/// The whole API of one agent.
pub fn router<S: Service>(service: Arc<S>, config: ApiConfig) -> Router {
    let body_idle_timeout = config.body_idle_timeout;
    let state = ApiState {
        service,
        limiter: config.rate_limit.map(|limit| Arc::new(Limiter::new(limit))),
        config: Arc::new(config),
    };
    let peers_only = middleware::from_fn_with_state(state.clone(), require_peer::<S>);
    Router::new()
        .merge(nodes::router::<S>(&state.config))
        .merge(apps::router::<S>(&state.config))
        .merge(events::router::<S>(&state.config))
        .merge(tenants::router::<S>(&state.config))
        .merge(audit::router::<S>(&state.config))
        // After the user routers, before the peers': every mutating user call is recorded,
        // with the route it matched.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            audit::record::<S>,
        ))
        // Outside the audit layer: a call over the limit is neither served nor recorded.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limited::limit::<S>,
        ))
        .route("/v1/openapi.json", axum::routing::get(openapi_json))
        // Scraped every few seconds, without a token: not rate limited.
        .merge(metrics::router::<S>(&state.config))
        // Outside the limit: loading the page must not spend the calls it is about to make.
        .merge(dashboard::router::<S>(&state.config))
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
        // Every routed request, the peers' too, timed by its route template.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::observe::<S>,
        ))
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
