//! Changes to an app other than a deploy: scale, rollback, restart, and the automatic
//! going back after a failed rollout; plus draining a node.
//!
//! Each is a new app record (last writer wins) committed like a deploy: durably on this
//! node and on the app's keepers before it is acknowledged. The reconciler then rolls it
//! out the same way as any release (`max_surge` new replicas at a time, old ones stopped
//! only once the new ones serve). Rollback and restart create a new release that copies an earlier
//! one (as Heroku does), so `stratus releases` tells the whole story.

use api::ApiError;
use proto::api::{ChangeAccepted, DrainReply, ReleaseSummary, ReleasesResponse};
use proto::catalog::{AppRecord, Release};
use proto::manifest::MAX_REPLICAS;
use tracing::{info, warn};

use crate::cluster::membership::ClusterView;
use crate::control::catalog::{KEEPERS, keepers};
use crate::control::hlc::unix_ms;
use crate::handles::AgentHandles;

/// `POST /v1/apps/{app}/scale`.
pub async fn scale(
    agent: &AgentHandles,
    app: &str,
    replicas: u32,
) -> Result<ChangeAccepted, ApiError> {
    if replicas > MAX_REPLICAS {
        return Err(ApiError::BadRequest(format!(
            "{replicas} replicas is out of range: use 0 to {MAX_REPLICAS}"
        )));
    }
    let existing = current(agent, app).await?;
    let release = release_of(&existing, app)?;
    crate::operations::quota::check_scale(agent, &existing, replicas).await?;
    let record = AppRecord {
        stamp: agent.catalog.stamp().await,
        replicas,
        ..existing.clone()
    };
    commit(agent, &record).await?;
    info!(app, from = existing.replicas, to = replicas, "scaled");
    Ok(ChangeAccepted {
        app: app.to_string(),
        release: release.number,
        replicas,
        message: format!(
            "scaling {app} from {} to {replicas} replicas",
            existing.replicas
        ),
    })
}

/// `POST /v1/apps/{app}/rollback`: a new release copying `to` (by default the newest
/// earlier release that did not fail).
pub async fn rollback(
    agent: &AgentHandles,
    app: &str,
    to: Option<u64>,
) -> Result<ChangeAccepted, ApiError> {
    let existing = current(agent, app).await?;
    let now = release_of(&existing, app)?.number;
    let releases = agent.catalog.releases(app).await;
    let target = match to {
        Some(number) if number == now => {
            return Err(ApiError::BadRequest(format!(
                "release {number} is the current release of {app}: pick an earlier one from `stratus releases {app}`"
            )));
        }
        Some(number) => releases.iter().find(|r| r.number == number).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{app} has no release {number}: `stratus releases {app}` lists them"
            ))
        })?,
        None => releases
            .iter()
            .filter(|r| r.number < now && !existing.failed.contains_key(&r.number))
            .max_by_key(|r| r.number)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{app} has no earlier good release to roll back to: `stratus releases {app}` lists them"
                ))
            })?,
    };
    let note = format!("rollback to v{}", target.number);
    copy_release(agent, existing, target.clone(), note).await
}

/// `POST /v1/apps/{app}/restart`: a new release copying the current one, rolled out one
/// replica at a time like any other.
pub async fn restart(agent: &AgentHandles, app: &str) -> Result<ChangeAccepted, ApiError> {
    let existing = current(agent, app).await?;
    let release = release_of(&existing, app)?.clone();
    let note = format!("restart of v{}", release.number);
    copy_release(agent, existing, release, note).await
}

pub(crate) async fn copy_release(
    agent: &AgentHandles,
    existing: AppRecord,
    source: Release,
    note: String,
) -> Result<ChangeAccepted, ApiError> {
    let app = existing.name.clone();
    ensure_bundle(agent, &source).await?;
    let view = agent.view().await;
    let live: Vec<&str> = view.live_nodes().map(|n| n.node_id.as_str()).collect();
    let number = release_number(agent, &view, &app, &live).await;
    let release = Release {
        number,
        created_at_ms: unix_ms(),
        created_on: agent.node_id().to_string(),
        note: Some(note.clone()),
        ..source
    };
    let record = AppRecord {
        stamp: agent.catalog.stamp().await,
        release: Some(release),
        ..existing
    };
    commit(agent, &record).await?;
    info!(app = %app, release = number, %note, "new release");
    Ok(ChangeAccepted {
        app: app.clone(),
        release: number,
        replicas: record.replicas,
        message: format!("release {number} of {app}: {note}"),
    })
}

/// The reconciler's verdict on a failed rollout: the app goes back to `previous` (whose
/// replicas still serve) and `failed` is marked failed with `reason`. Ignored if the app
/// has moved on meanwhile.
pub async fn roll_back_failed(
    agent: &AgentHandles,
    app: &str,
    failed: u64,
    previous: u64,
    reason: &str,
) -> Result<(), ApiError> {
    let existing = current(agent, app).await?;
    if existing.release.as_ref().map(|r| r.number) != Some(failed) {
        return Ok(());
    }
    let target = agent
        .catalog
        .releases(app)
        .await
        .into_iter()
        .find(|r| r.number == previous)
        .ok_or_else(|| ApiError::Internal(format!("release {previous} of {app} is unknown")))?;
    let mut failed_map = existing.failed.clone();
    failed_map.insert(failed, reason.to_string());
    let record = AppRecord {
        stamp: agent.catalog.stamp().await,
        release: Some(target),
        failed: failed_map,
        ..existing
    };
    commit(agent, &record).await.map(|_| ())
}

/// `GET /v1/apps/{app}/releases`, newest first.
pub async fn releases(agent: &AgentHandles, app: &str) -> Result<ReleasesResponse, ApiError> {
    let record = current(agent, app).await?;
    let current_number = record.release.as_ref().map(|r| r.number);
    let mut releases: Vec<ReleaseSummary> = agent
        .catalog
        .releases(app)
        .await
        .into_iter()
        .map(|release| {
            let failure = record.failed.get(&release.number).cloned();
            let status = if Some(release.number) == current_number {
                "current"
            } else if failure.is_some() {
                "failed"
            } else {
                "superseded"
            };
            ReleaseSummary {
                number: release.number,
                sha256: release.bundle.sha256,
                size: release.bundle.size,
                created_at_ms: release.created_at_ms,
                created_on: release.created_on,
                note: release.note,
                status: status.to_string(),
                failure,
            }
        })
        .collect();
    releases.sort_by_key(|release| std::cmp::Reverse(release.number));
    Ok(ReleasesResponse {
        app: app.to_string(),
        releases,
    })
}

/// `POST /v1/nodes/{node}/drain|undrain`: this node, or forwarded to the named one.
pub async fn drain(
    agent: &AgentHandles,
    node_id: &str,
    draining: bool,
) -> Result<DrainReply, ApiError> {
    if node_id == agent.node_id() {
        set_own_draining(agent, draining).await?;
        return Ok(DrainReply {
            node_id: node_id.to_string(),
            draining,
        });
    }
    let view = agent.view().await;
    let node = view.node(node_id).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "no node {node_id:?} in the cluster: `stratus nodes` lists them"
        ))
    })?;
    let client = node
        .identity
        .as_ref()
        .and_then(|identity| agent.peers.client(identity.api_addr))
        .ok_or_else(|| ApiError::Unavailable(format!("no API address known for {node_id}")))?;
    client.set_draining(node_id, draining).await.map_err(|err| {
        ApiError::Unavailable(format!(
            "{node_id} did not take the change ({err}): is it live? `stratus nodes` shows it"
        ))
    })
}

/// Drains (or undrains) this node: remembered across restarts, gossiped, and new
/// placements are refused while it lasts.
pub async fn set_own_draining(agent: &AgentHandles, draining: bool) -> Result<(), ApiError> {
    agent
        .admission
        .set_draining(draining)
        .await
        .map_err(ApiError::Unavailable)?;
    agent.membership.set_draining(draining).await;
    // The reconcilers act on the next gossip change; wake this node's own at once.
    agent.catalog.wake();
    info!(draining, "drain state changed");
    Ok(())
}

pub(crate) async fn current(agent: &AgentHandles, app: &str) -> Result<AppRecord, ApiError> {
    agent
        .catalog
        .live_record(app)
        .await
        .ok_or_else(|| ApiError::UnknownApp(app.to_string()))
}

pub(crate) fn release_of<'a>(record: &'a AppRecord, app: &str) -> Result<&'a Release, ApiError> {
    record
        .release
        .as_ref()
        .ok_or_else(|| ApiError::Conflict(format!("{app} has no release yet: deploy it first")))
}

/// Makes sure this node holds the bundle of `release` (fetching it from a peer if not),
/// so it can hand it to keepers that lack it.
async fn ensure_bundle(agent: &AgentHandles, release: &Release) -> Result<(), ApiError> {
    if agent.bundles.reachable(&release.bundle.sha256) {
        return Ok(());
    }
    let view = agent.view().await;
    let holders: Vec<std::net::SocketAddr> = view
        .live_nodes()
        .filter(|node| node.node_id != agent.node_id())
        .filter_map(|node| node.identity.as_ref().map(|identity| identity.api_addr))
        .collect();
    crate::workload::supervisor::fetch_bundle(agent, &release.bundle.sha256, &holders, "change")
        .await
        .map_err(ApiError::Unavailable)
}

/// Stores `record` here and on the app's keepers (sending the bundle to those that lack
/// it); acknowledged only once held by as many nodes as a deploy needs.
pub async fn commit(agent: &AgentHandles, record: &AppRecord) -> Result<Vec<String>, ApiError> {
    let app = record.name.as_str();
    agent
        .catalog
        .merge(record.clone())
        .await
        .map_err(store_unavailable)?;
    agent.membership.publish_app(record).await;
    let held = hold_on_keepers(agent, app, |client| async move {
        hold_with_bundle(agent, &client, record).await
    })
    .await;
    if held.holders.len() < held.needed {
        return Err(ApiError::Unavailable(format!(
            "the change to {app} is held by only {} of {} nodes ({}), so it is not \
             acknowledged: it may still apply; check `stratus status {app}` or try again",
            held.holders.len(),
            held.needed,
            held.holders.join(", ")
        )));
    }
    Ok(held.holders)
}

/// A keeper that lacks the bundle (keepers moved since the deploy) is sent it first.
async fn hold_with_bundle(
    agent: &AgentHandles,
    client: &api::Client,
    record: &AppRecord,
) -> Result<(), api::ClientError> {
    let held = client.hold_record(record).await;
    let Some(release) = &record.release else {
        return held;
    };
    if !held.as_ref().is_err_and(|err| err.status() == Some(409)) || agent.bundles.s3().is_some() {
        return held;
    }
    match agent.bundles.local().path(&release.bundle.sha256) {
        Ok(blob) => {
            client.put_blob(&release.bundle.sha256, &blob).await?;
            client.hold_record(record).await
        }
        Err(err) => {
            warn!(app = %record.name, error = %err, "no local copy of the bundle to send");
            held
        }
    }
}

/// Who holds a change: this node, then those of the keepers of `key` that took it, in
/// keeper order, until `needed` (as many as a deploy needs: [`KEEPERS`], or every live
/// node if fewer).
pub(crate) struct Held {
    pub holders: Vec<String>,
    pub needed: usize,
}

/// Hands a change this node already holds to the keepers of `key` with `hold`.
pub(crate) async fn hold_on_keepers<F, Fut>(agent: &AgentHandles, key: &str, mut hold: F) -> Held
where
    F: FnMut(api::Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), api::ClientError>>,
{
    let view = agent.view().await;
    let live: Vec<&str> = view.live_nodes().map(|n| n.node_id.as_str()).collect();
    let needed = KEEPERS.min(live.len().max(1));
    let mut holders = vec![agent.node_id().to_string()];
    for target in keepers(key, &live, live.len()) {
        if holders.len() >= needed {
            break;
        }
        if target == agent.node_id() {
            continue;
        }
        let Some(client) = view
            .node(&target)
            .and_then(|n| n.identity.as_ref())
            .and_then(|identity| agent.peers.client(identity.api_addr))
        else {
            continue;
        };
        match hold(client).await {
            Ok(()) => holders.push(target),
            Err(err) => warn!(key, node = %target, error = %err, "could not pass the change on"),
        }
    }
    Held { holders, needed }
}

/// Asks the app's first keeper for the next number (so two nodes deploying the same app at
/// once get different ones); falls back to this node's own count if the keeper is away.
pub(crate) async fn release_number(
    agent: &AgentHandles,
    view: &ClusterView,
    app: &str,
    live: &[&str],
) -> u64 {
    let keeper = keepers(app, live, 1).into_iter().next();
    let peer = keeper
        .as_deref()
        .filter(|keeper| *keeper != agent.node_id())
        .and_then(|keeper| view.node(keeper))
        .and_then(|node| node.identity.as_ref())
        .and_then(|identity| agent.peers.client(identity.api_addr));
    if let Some(client) = peer {
        match client.reserve_release_number(app).await {
            Ok(number) => {
                // Keep our own counter ahead too, in case we become the keeper.
                let mine = agent.catalog.reserve_release_number(app).await;
                return number.max(mine);
            }
            Err(err) => {
                warn!(app, error = %err, "the app's keeper did not answer: numbering locally")
            }
        }
    }
    agent.catalog.reserve_release_number(app).await
}

pub(crate) fn store_unavailable(err: crate::control::catalog::StoreError) -> ApiError {
    ApiError::Unavailable(format!(
        "this node cannot write its catalog ({err}): try another node"
    ))
}
