//! `/v1/audit`, and the layer that records every mutating call (deploy, scale, config,
//! tokens, tenants, destroy, drain...) on the node that served it: who (token, tenant),
//! what (method and route, path), the answer's status and the caller's address.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use proto::api::{AuditResponse, ErrorBody};

use super::shared::{Json, Query, deadline};
use crate::caller::{Caller, Principal, TenantAdmin, caller_of};
use crate::service::{AuditQuery, AuditedCall, Service};
use crate::state::{ApiConfig, ApiState};

pub fn router<S: Service>(config: &ApiConfig) -> Router<ApiState<S>> {
    Router::new().route(
        "/v1/audit",
        deadline(get(gather::<S>), config.request_timeout),
    )
}

/// Every live node's audit records, oldest first: a tenant's admin gets its tenant's,
/// the cluster administrator everyone's.
#[utoipa::path(get, path = "/v1/audit", tag = "tenants",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn gather<S: Service>(
    State(state): State<ApiState<S>>,
    TenantAdmin(caller): TenantAdmin,
    Query(mut query): Query<AuditQuery>,
) -> Json<AuditResponse> {
    if let Some(tenant) = caller.tenant() {
        query.tenant = Some(tenant.to_string());
    }
    Json(state.service.gather_audit(query).await)
}

/// Records a mutating call once it has its answer. Peer routes are not audited: they are
/// the cluster's own traffic, and every user change behind them is recorded where it came
/// in.
pub async fn record<S: Service>(
    State(state): State<ApiState<S>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let mutating = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !mutating || path.starts_with("/v1/internal") || path.starts_with("/v1/blobs") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let caller = caller_of(&parts, &*state.service).ok();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(|| path.clone(), |matched| matched.as_str().to_string());
    let source = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.to_string());
    let action = format!("{} {route}", parts.method);
    let response = next.run(Request::from_parts(parts, body)).await;
    let (token_id, token_name, tenant) = match caller {
        Some(Caller::User(Principal::Admin)) => ("admin".to_string(), None, None),
        Some(Caller::User(Principal::Tenant(tenant))) => {
            (tenant.token_id, tenant.token_name, Some(tenant.tenant))
        }
        None => ("none".to_string(), None, None),
    };
    state
        .service
        .record_audit(AuditedCall {
            token_id,
            token_name,
            tenant,
            action,
            target: path,
            status: response.status().as_u16(),
            source,
        })
        .await;
    response
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(gather))]
pub struct AuditApi;
