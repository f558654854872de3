//! `/v1/whoami`, `/v1/tenants` and `/v1/tokens`: who calls, the tenants (the cluster
//! administrator's) and their tokens (each tenant's admins, and the administrator).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use proto::api::{
    CreateTenantRequest, CreateTokenRequest, ErrorBody, TenantView, TenantsResponse, TokenCreated,
    TokenView, TokensResponse, WhoAmI,
};
use proto::tenancy::Quota;
use serde::Deserialize;

use super::shared::{Json, Path, Query, deadline};
use crate::caller::{ClusterAdmin, Principal, Reader, TenantAdmin};
use crate::error::ApiError;
use crate::service::Service;
use crate::state::{ApiConfig, ApiState};

pub fn router<S: Service>(config: &ApiConfig) -> Router<ApiState<S>> {
    let answer = config.request_timeout;
    Router::new()
        .route("/v1/whoami", deadline(get(whoami), answer))
        .route(
            "/v1/tenants",
            deadline(get(list_tenants::<S>).post(create_tenant::<S>), answer),
        )
        .route(
            "/v1/tenants/{tenant}",
            deadline(axum::routing::delete(delete_tenant::<S>), answer),
        )
        .route(
            "/v1/tenants/{tenant}/quota",
            deadline(put(set_quota::<S>), answer),
        )
        .route(
            "/v1/tokens",
            deadline(get(list_tokens::<S>).post(create_token::<S>), answer),
        )
        .route(
            "/v1/tokens/{id}",
            deadline(axum::routing::delete(revoke_token::<S>), answer),
        )
}

/// The tenant, role and expiry of the token that asks.
#[utoipa::path(get, path = "/v1/whoami", tag = "tenants",
    responses(
        (status = 200, body = WhoAmI),
        (status = 401, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn whoami(Reader(caller): Reader) -> Json<WhoAmI> {
    Json(match caller {
        Principal::Admin => WhoAmI {
            admin: true,
            tenant: None,
            role: proto::tenancy::Role::Admin,
            token_id: "admin".into(),
            token_name: None,
            expires_at_ms: None,
        },
        Principal::Tenant(tenant) => WhoAmI {
            admin: false,
            tenant: Some(tenant.tenant),
            role: tenant.role,
            token_id: tenant.token_id,
            token_name: tenant.token_name,
            expires_at_ms: tenant.expires_at_ms,
        },
    })
}

/// The tenants the token may see (the administrator: all; a tenant's token: its own), with
/// their quotas and what they use.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses(
        (status = 200, body = TenantsResponse),
        (status = 401, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn list_tenants<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
) -> Json<TenantsResponse> {
    Json(state.service.tenants(&caller).await)
}

/// Creates a tenant (cluster administrator only).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants",
    request_body = CreateTenantRequest,
    responses(
        (status = 201, body = TenantView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn create_tenant<S: Service>(
    State(state): State<ApiState<S>>,
    ClusterAdmin(caller): ClusterAdmin,
    Json(request): Json<CreateTenantRequest>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    let tenant = state.service.create_tenant(&caller, request).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Deletes a tenant that has no apps left; its tokens stop working everywhere.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "tenant name")),
    responses(
        (status = 200, body = TenantView),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn delete_tenant<S: Service>(
    State(state): State<ApiState<S>>,
    ClusterAdmin(caller): ClusterAdmin,
    Path(tenant): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(state.service.delete_tenant(&caller, &tenant).await?))
}

/// Sets a tenant's quota (cluster administrator only); unset fields are unlimited.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/quota", tag = "tenants",
    params(("tenant" = String, Path, description = "tenant name")),
    request_body = Quota,
    responses(
        (status = 200, body = TenantView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn set_quota<S: Service>(
    State(state): State<ApiState<S>>,
    ClusterAdmin(caller): ClusterAdmin,
    Path(tenant): Path<String>,
    Json(quota): Json<Quota>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(
        state.service.set_quota(&caller, &tenant, quota).await?,
    ))
}

/// `?tenant=` of the token list.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TokensQuery {
    /// Only this tenant's tokens (a tenant's admin sees only its own anyway).
    tenant: Option<String>,
}

/// The tokens of the caller's tenant (the administrator: of every tenant, or `?tenant=`),
/// never their secrets.
#[utoipa::path(get, path = "/v1/tokens", tag = "tenants",
    params(TokensQuery),
    responses(
        (status = 200, body = TokensResponse),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn list_tokens<S: Service>(
    State(state): State<ApiState<S>>,
    TenantAdmin(caller): TenantAdmin,
    Query(query): Query<TokensQuery>,
) -> Json<TokensResponse> {
    Json(state.service.tokens(&caller, query.tenant.as_deref()).await)
}

/// Creates a token; the answer is the only time its secret is shown.
#[utoipa::path(post, path = "/v1/tokens", tag = "tenants",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, body = TokenCreated),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn create_token<S: Service>(
    State(state): State<ApiState<S>>,
    TenantAdmin(caller): TenantAdmin,
    Json(request): Json<CreateTokenRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let created = state.service.create_token(&caller, request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Revokes a token: every node refuses it within a few gossip rounds.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tenants",
    params(("id" = String, Path, description = "the token's id (the part after stratus_)")),
    responses(
        (status = 200, body = TokenView),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("token" = [])))]
async fn revoke_token<S: Service>(
    State(state): State<ApiState<S>>,
    TenantAdmin(caller): TenantAdmin,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    Ok(Json(state.service.revoke_token(&caller, &id).await?))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    whoami,
    list_tenants,
    create_tenant,
    delete_tenant,
    set_quota,
    list_tokens,
    create_token,
    revoke_token
))]
pub struct TenantsApi;
