//! Keeping a tenant within its quota when a deploy or a scale asks for more: the request
//! goes to the tenant's quota keeper (its first keeper among the live nodes), which
//! counts it against the catalog and the reservations still in flight
//! ([`crate::tenancy::reservations`]).
//!
//! During a partition each side may elect its own keeper. A keeper grants nothing unless
//! it sees a majority of the cluster's nodes live, so at most one side grants and the
//! quota holds; the minority side answers 503 until the partition heals.

use std::collections::BTreeMap;

use api::{ApiError, ErrorCode};
use proto::api::{NodeStatus, ReserveQuota};
use proto::catalog::AppRecord;
use proto::gossip::tenant_key;
use proto::manifest::Manifest;
use proto::tenancy::{Quota, Usage};

use crate::control::catalog::keepers;
use crate::handles::AgentHandles;

/// A deploy of `app` with `manifest`, for `tenant` (`None`: the administrator's, unlimited).
pub async fn check_deploy(
    agent: &AgentHandles,
    tenant: Option<&str>,
    app: &str,
    manifest: &Manifest,
) -> Result<(), ApiError> {
    let asked = Usage::reserved(manifest.resources, manifest.replicas);
    reserve(agent, tenant, app, asked).await
}

/// A scale of `record` to `replicas`.
pub async fn check_scale(
    agent: &AgentHandles,
    record: &AppRecord,
    replicas: u32,
) -> Result<(), ApiError> {
    let asked = Usage::of_app(record, replicas);
    reserve(agent, record.tenant.as_deref(), &record.name, asked).await
}

async fn reserve(
    agent: &AgentHandles,
    tenant: Option<&str>,
    app: &str,
    asked: Usage,
) -> Result<(), ApiError> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    let quota = agent
        .tenancy
        .snapshot()
        .tenant(tenant)
        .map(|record| record.quota)
        .unwrap_or_default();
    if quota == Quota::default() {
        return Ok(());
    }
    let view = agent.view().await;
    let live: Vec<&str> = view.live_nodes().map(|n| n.node_id.as_str()).collect();
    let keeper = keepers(&tenant_key(tenant), &live, 1)
        .into_iter()
        .next()
        .unwrap_or_else(|| agent.node_id().to_string());
    if keeper == agent.node_id() {
        return keep(agent, tenant, app, asked).await;
    }
    let client = view
        .node(&keeper)
        .and_then(|node| node.identity.as_ref())
        .and_then(|identity| agent.peers.client(identity.api_addr))
        .ok_or_else(|| keeper_unreachable(&keeper, "it has no API address"))?;
    let request = ReserveQuota {
        app: app.to_string(),
        usage: asked,
    };
    match client.reserve_quota(tenant, &request).await {
        Ok(()) => Ok(()),
        Err(err) if err.status() == Some(409) => Err(ApiError::Service {
            code: ErrorCode::QuotaExceeded,
            detail: err.detail().unwrap_or_else(|| err.to_string()),
        }),
        Err(err) => Err(keeper_unreachable(&keeper, &err.to_string())),
    }
}

/// This node is `tenant`'s quota keeper: grant or refuse.
pub async fn keep(
    agent: &AgentHandles,
    tenant: &str,
    app: &str,
    asked: Usage,
) -> Result<(), ApiError> {
    let view = agent.view().await;
    let members = view
        .nodes
        .iter()
        .filter(|node| node.status != NodeStatus::Left)
        .count();
    let live = view.live_nodes().count();
    if live * 2 <= members {
        return Err(ApiError::Unavailable(format!(
            "the quota keeper of {tenant} sees only {live} of {members} nodes live, not a majority, so it cannot \
             count for the whole cluster: try again when the partition heals"
        )));
    }
    let recorded: BTreeMap<String, Usage> = agent
        .catalog
        .read(|catalog| {
            catalog
                .apps()
                .filter(|record| record.tenant.as_deref() == Some(tenant))
                .map(|record| (record.name.clone(), Usage::of_app(record, record.replicas)))
                .collect()
        })
        .await;
    agent
        .tenancy
        .reserve(tenant, app, asked, &recorded)
        .await
        .map_err(|exceeded| ApiError::Service {
            code: ErrorCode::QuotaExceeded,
            detail: exceeded.to_string(),
        })
}

fn keeper_unreachable(keeper: &str, why: &str) -> ApiError {
    ApiError::Unavailable(format!(
        "cannot reach {keeper}, the tenant's quota keeper ({why}): try again in a few seconds"
    ))
}
