//! Tenants and tokens asked for through the API: each change is a new record, held by the
//! record's keepers before it is acknowledged (as app records are), then spread by gossip.

use api::{ApiError, Principal};
use proto::api::{
    CreateTenantRequest, CreateTokenRequest, TenantView, TenantsResponse, TokenCreated, TokenView,
    TokensResponse,
};
use proto::tenancy::{
    Quota, TOKEN_ID_LEN, TOKEN_SECRET_LEN, TenancyRecord, TenantRecord, TokenRecord, TokenText,
    Usage, valid_tenant_name, valid_token_id,
};
use rand::RngCore as _;
use tracing::info;

use crate::control::hlc::unix_ms;
use crate::handles::AgentHandles;
use crate::operations::changes::{hold_on_keepers, store_unavailable};
use crate::tenancy::directory::secret_digest;

/// Longest a token may live when it has an expiry (ten years).
const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

pub async fn tenants(agent: &AgentHandles, caller: &Principal) -> TenantsResponse {
    let directory = agent.tenancy.snapshot();
    let records = agent.catalog.records().await;
    let tenants = directory
        .tenants()
        .filter(|tenant| caller.may_touch(Some(&tenant.name)))
        .map(|tenant| view(tenant, Usage::of_tenant(&tenant.name, &records)))
        .collect();
    TenantsResponse { tenants }
}

pub async fn create_tenant(
    agent: &AgentHandles,
    request: CreateTenantRequest,
) -> Result<TenantView, ApiError> {
    if !valid_tenant_name(&request.name) {
        return Err(ApiError::BadRequest(format!(
            "invalid tenant name {:?}: use 1 to 40 lowercase letters, digits and dashes, \
             not starting or ending with a dash",
            request.name
        )));
    }
    if agent.tenancy.snapshot().tenant(&request.name).is_some() {
        return Err(ApiError::Conflict(format!(
            "tenant {} already exists: `stratus tenant list` shows it",
            request.name
        )));
    }
    let record = TenantRecord {
        name: request.name.clone(),
        stamp: agent.catalog.stamp().await,
        deleted: false,
        isolation: request.isolation,
        quota: request.quota,
        created_at_ms: unix_ms(),
    };
    commit(agent, TenancyRecord::Tenant(record.clone())).await?;
    info!(tenant = %record.name, isolation = record.isolation.as_str(), "tenant created");
    Ok(view(&record, Usage::default()))
}

pub async fn delete_tenant(agent: &AgentHandles, name: &str) -> Result<TenantView, ApiError> {
    let existing = known_tenant(agent, name)?;
    let apps: Vec<String> = agent
        .catalog
        .read(|catalog| {
            catalog
                .apps()
                .filter(|record| record.tenant.as_deref() == Some(name))
                .map(|record| record.name.clone())
                .collect()
        })
        .await;
    if !apps.is_empty() {
        return Err(ApiError::Conflict(format!(
            "tenant {name} still has apps ({}): destroy them first",
            apps.join(", ")
        )));
    }
    let tombstone = TenantRecord {
        stamp: agent.catalog.stamp().await,
        deleted: true,
        ..existing
    };
    commit(agent, TenancyRecord::Tenant(tombstone.clone())).await?;
    info!(tenant = name, "tenant deleted");
    Ok(view(&tombstone, Usage::default()))
}

pub async fn set_quota(
    agent: &AgentHandles,
    name: &str,
    quota: Quota,
) -> Result<TenantView, ApiError> {
    let existing = known_tenant(agent, name)?;
    let record = TenantRecord {
        stamp: agent.catalog.stamp().await,
        quota,
        ..existing
    };
    commit(agent, TenancyRecord::Tenant(record.clone())).await?;
    let records = agent.catalog.records().await;
    Ok(view(&record, Usage::of_tenant(name, &records)))
}

pub async fn tokens(
    agent: &AgentHandles,
    caller: &Principal,
    tenant: Option<&str>,
) -> TokensResponse {
    let directory = agent.tenancy.snapshot();
    let tenant = caller.tenant().or(tenant);
    let tokens = directory.tokens(tenant).map(TokenView::from).collect();
    TokensResponse { tokens }
}

pub async fn create_token(
    agent: &AgentHandles,
    caller: &Principal,
    request: CreateTokenRequest,
) -> Result<TokenCreated, ApiError> {
    if !caller.may_touch(Some(&request.tenant)) {
        return Err(unknown_tenant(&request.tenant));
    }
    known_tenant(agent, &request.tenant)?;
    let lifetime = request.expires_in_secs;
    if lifetime.is_some_and(|secs| secs == 0 || secs > MAX_TOKEN_LIFETIME_SECS) {
        return Err(ApiError::BadRequest(
            "expires_in_secs must be between 1 second and 10 years".into(),
        ));
    }
    if request.name.as_ref().is_some_and(|name| name.len() > 64) {
        return Err(ApiError::BadRequest(
            "a token name is at most 64 characters".into(),
        ));
    }
    let text = new_token_text();
    let now = unix_ms();
    let record = TokenRecord {
        id: text.id.clone(),
        stamp: agent.catalog.stamp().await,
        tenant: request.tenant.clone(),
        role: request.role,
        name: request.name,
        secret_sha256: secret_digest(&text.secret),
        created_at_ms: now,
        expires_at_ms: lifetime.map(|secs| now + secs * 1000),
        revoked_at_ms: None,
    };
    commit(agent, TenancyRecord::Token(record.clone())).await?;
    info!(token = %record.id, tenant = %record.tenant, role = %record.role, "token created");
    Ok(TokenCreated {
        token: text.to_string(),
        view: TokenView::from(&record),
    })
}

pub async fn revoke_token(
    agent: &AgentHandles,
    caller: &Principal,
    id: &str,
) -> Result<TokenView, ApiError> {
    let known = agent
        .tenancy
        .snapshot()
        .token(id)
        .filter(|token| caller.may_touch(Some(&token.tenant)))
        .cloned()
        .ok_or_else(|| ApiError::Service {
            code: api::ErrorCode::NotFound,
            detail: format!("no token {id} in your tenant: `stratus token list` lists them"),
        })?;
    if known.revoked_at_ms.is_some() {
        return Ok(TokenView::from(&known));
    }
    let record = TokenRecord {
        stamp: agent.catalog.stamp().await,
        revoked_at_ms: Some(unix_ms()),
        ..known
    };
    commit(agent, TenancyRecord::Token(record.clone())).await?;
    info!(token = id, tenant = %record.tenant, "token revoked");
    Ok(TokenView::from(&record))
}

/// A peer keeps a record: persisted here, then published if this node keeps it.
pub async fn hold(agent: &AgentHandles, record: TenancyRecord) -> Result<(), ApiError> {
    let valid = match &record {
        TenancyRecord::Tenant(tenant) => valid_tenant_name(&tenant.name),
        TenancyRecord::Token(token) => {
            valid_token_id(&token.id) && valid_tenant_name(&token.tenant)
        }
    };
    if !valid {
        return Err(ApiError::BadRequest(format!(
            "invalid tenancy record {}",
            record.key()
        )));
    }
    agent
        .tenancy
        .merge(record.clone())
        .await
        .map_err(store_unavailable)?;
    agent.membership.publish_tenancy(&record).await;
    Ok(())
}

/// Merges `record` here and has it held by enough of its keepers before the change is
/// acknowledged, so one node dying loses nothing acknowledged.
async fn commit(agent: &AgentHandles, record: TenancyRecord) -> Result<(), ApiError> {
    agent
        .tenancy
        .merge(record.clone())
        .await
        .map_err(store_unavailable)?;
    agent.membership.publish_tenancy(&record).await;
    let key = record.key();
    let record = &record;
    let held = hold_on_keepers(agent, &key, |client| async move {
        client.hold_tenancy(record).await
    })
    .await;
    if held.holders.len() < held.needed {
        return Err(ApiError::Unavailable(format!(
            "the change is held by only {} of {} nodes ({}), so it is not acknowledged: \
             it may still apply; check with a list command or try again",
            held.holders.len(),
            held.needed,
            held.holders.join(", ")
        )));
    }
    Ok(())
}

fn new_token_text() -> TokenText {
    let mut id = [0u8; TOKEN_ID_LEN / 2];
    let mut secret = [0u8; TOKEN_SECRET_LEN / 2];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    TokenText {
        id: hex::encode(id),
        secret: hex::encode(secret),
    }
}

fn known_tenant(agent: &AgentHandles, name: &str) -> Result<TenantRecord, ApiError> {
    agent
        .tenancy
        .snapshot()
        .tenant(name)
        .cloned()
        .ok_or_else(|| unknown_tenant(name))
}

fn unknown_tenant(name: &str) -> ApiError {
    ApiError::Service {
        code: api::ErrorCode::NotFound,
        detail: format!("no tenant named {name:?}: `stratus tenant list` lists them"),
    }
}

fn view(tenant: &TenantRecord, used: Usage) -> TenantView {
    TenantView {
        name: tenant.name.clone(),
        isolation: tenant.isolation,
        quota: tenant.quota,
        used,
        created_at_ms: tenant.created_at_ms,
    }
}
