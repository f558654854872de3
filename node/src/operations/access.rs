//! What a caller may see and change of the apps: every app belongs to a tenant (or to the
//! cluster administrator), and a tenant's token sees only its tenant's apps. Another
//! tenant's app answers exactly as an absent one does, so names leak nothing but their
//! being taken (app names are cluster-wide, as on Heroku).

use api::{ApiError, Principal};
use proto::catalog::{AppRecord, Stamp};
use proto::manifest::Manifest;

use crate::handles::AgentHandles;

/// `Ok` if `app` is absent or the caller's; another tenant's app is [`ApiError::UnknownApp`].
pub async fn check_app(
    agent: &AgentHandles,
    caller: &Principal,
    app: &str,
) -> Result<(), ApiError> {
    match agent.catalog.live_record(app).await {
        Some(record) if !caller.may_touch(record.tenant.as_deref()) => {
            Err(ApiError::UnknownApp(app.to_string()))
        }
        _ => Ok(()),
    }
}

/// The tenant a deploy of `app` by `caller` writes: the existing app's, or the caller's for
/// a new app. A name another tenant holds is taken.
pub fn deploy_owner(
    caller: &Principal,
    existing: Option<&AppRecord>,
    app: &str,
) -> Result<Option<String>, ApiError> {
    match existing {
        Some(record) if !caller.may_touch(record.tenant.as_deref()) => Err(ApiError::Conflict(
            format!("the app name {app} is taken: choose another name in stratus.toml"),
        )),
        Some(record) => Ok(record.tenant.clone()),
        None => Ok(caller.tenant().map(str::to_string)),
    }
}

/// Refuses a manifest whose `domains` include one another tenant's app claims. The owner
/// app is named only to the cluster administrator.
pub fn check_domains<'a>(
    caller: &Principal,
    tenant: Option<&str>,
    app: &str,
    manifest: &Manifest,
    others: impl IntoIterator<Item = &'a AppRecord>,
) -> Result<(), ApiError> {
    for other in others {
        if other.deleted || other.name == app || other.tenant.as_deref() == tenant {
            continue;
        }
        let Some(release) = &other.release else {
            continue;
        };
        if let Some(domain) = manifest
            .domains
            .iter()
            .find(|domain| release.manifest.domains.contains(domain))
        {
            let owner = if caller.is_admin() {
                format!(
                    "the app {} (tenant {})",
                    other.name,
                    other.tenant.as_deref().unwrap_or("none")
                )
            } else {
                "another tenant's app".to_string()
            };
            return Err(ApiError::Conflict(format!(
                "the domain {domain} is claimed by {owner}: remove it from `domains` in stratus.toml"
            )));
        }
    }
    Ok(())
}

/// The claim stamps of a deploy's domains: kept from the previous record, new ones now.
pub fn domain_claims(
    manifest: &Manifest,
    previous: Option<&AppRecord>,
    now: &Stamp,
) -> std::collections::BTreeMap<String, Stamp> {
    manifest
        .domains
        .iter()
        .map(|domain| {
            let since = previous
                .and_then(|record| record.domain_claims.get(domain))
                .unwrap_or(now);
            (domain.clone(), since.clone())
        })
        .collect()
}
