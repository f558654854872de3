//! Changes to an app other than a deploy: scale, rollback, restart, and the automatic
//! going back after a failed rollout; plus draining a node.
//!
//! Each is a new app record (last writer wins) committed like a deploy: durably on this
//! node and on the app's keepers before it is acknowledged. The reconciler then rolls it
//! out the same way as any release (one new replica at a time, old ones stopped only once
//! the new ones serve). Rollback and restart create a new release that copies an earlier
//! one (as Heroku does), so `stratus releases` tells the whole story.

use std::sync::atomic::Ordering;

use api::ApiError;
use proto::api::{ChangeAccepted, DrainReply, ReleaseSummary, ReleasesResponse};
use proto::catalog::{AppRecord, Release};
use proto::manifest::MAX_REPLICAS;
use tracing::{info, warn};

use crate::control::catalog::{KEEPERS, keepers};
use crate::state::{AgentState, unix_ms};

/// `POST /v1/apps/{app}/scale`.
pub async fn scale(
    state: &AgentState,
    app: &str,
    replicas: u32,
) -> Result<ChangeAccepted, ApiError> {
    if replicas > MAX_REPLICAS {
        return Err(ApiError::BadRequest(format!(
            "{replicas} replicas is out of range: use 0 to {MAX_REPLICAS}"
        )));
    }
    let existing = current(state, app).await?;
    let release = release_of(&existing, app)?;
    let record = AppRecord {
        stamp: state.stamp().await,
        replicas,
        ..existing.clone()
    };
    commit(state, &record).await?;
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
    state: &AgentState,
    app: &str,
    to: Option<u64>,
) -> Result<ChangeAccepted, ApiError> {
    let existing = current(state, app).await?;
    let now = release_of(&existing, app)?.number;
    let releases: Vec<Release> = state
        .catalog
        .lock()
        .await
        .releases(app)
        .into_iter()
        .cloned()
        .collect();
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
    copy_release(state, existing, target.clone(), note).await
}

/// `POST /v1/apps/{app}/restart`: a new release copying the current one, rolled out one
/// replica at a time like any other.
pub async fn restart(state: &AgentState, app: &str) -> Result<ChangeAccepted, ApiError> {
    let existing = current(state, app).await?;
    let release = release_of(&existing, app)?.clone();
    let note = format!("restart of v{}", release.number);
    copy_release(state, existing, release, note).await
}

async fn copy_release(
    state: &AgentState,
    existing: AppRecord,
    source: Release,
    note: String,
) -> Result<ChangeAccepted, ApiError> {
    let app = existing.name.clone();
    ensure_bundle(state, &source).await?;
    let view = state.view().await;
    let live: Vec<&str> = view.live_nodes().map(|n| n.node_id.as_str()).collect();
    let number = crate::operations::deploy::release_number(state, &view, &app, &live).await;
    let release = Release {
        number,
        created_at_ms: unix_ms(),
        created_on: state.node_id().to_string(),
        note: Some(note.clone()),
        ..source
    };
    let record = AppRecord {
        stamp: state.stamp().await,
        release: Some(release),
        ..existing
    };
    commit(state, &record).await?;
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
    state: &AgentState,
    app: &str,
    failed: u64,
    previous: u64,
    reason: &str,
) -> Result<(), ApiError> {
    let existing = current(state, app).await?;
    if existing.release.as_ref().map(|r| r.number) != Some(failed) {
        return Ok(());
    }
    let target = state
        .catalog
        .lock()
        .await
        .releases(app)
        .into_iter()
        .find(|r| r.number == previous)
        .cloned()
        .ok_or_else(|| ApiError::Internal(format!("release {previous} of {app} is unknown")))?;
    let mut failed_map = existing.failed.clone();
    failed_map.insert(failed, reason.to_string());
    let record = AppRecord {
        stamp: state.stamp().await,
        release: Some(target),
        failed: failed_map,
        ..existing
    };
    commit(state, &record).await.map(|_| ())
}

/// `GET /v1/apps/{app}/releases`, newest first.
pub async fn releases(state: &AgentState, app: &str) -> Result<ReleasesResponse, ApiError> {
    let record = current(state, app).await?;
    let current_number = record.release.as_ref().map(|r| r.number);
    let catalog = state.catalog.lock().await;
    let mut releases: Vec<ReleaseSummary> = catalog
        .releases(app)
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
                sha256: release.bundle.sha256.clone(),
                size: release.bundle.size,
                created_at_ms: release.created_at_ms,
                created_on: release.created_on.clone(),
                note: release.note.clone(),
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
    state: &AgentState,
    node_id: &str,
    draining: bool,
) -> Result<DrainReply, ApiError> {
    if node_id == state.node_id() {
        set_own_draining(state, draining).await?;
        return Ok(DrainReply {
            node_id: node_id.to_string(),
            draining,
        });
    }
    let view = state.view().await;
    let node = view.node(node_id).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "no node {node_id:?} in the cluster: `stratus nodes` lists them"
        ))
    })?;
    let client = node
        .identity
        .as_ref()
        .and_then(|identity| state.peer(identity.api_addr))
        .ok_or_else(|| ApiError::Unavailable(format!("no API address known for {node_id}")))?;
    client.set_draining(node_id, draining).await.map_err(|err| {
        ApiError::Unavailable(format!(
            "{node_id} did not take the change ({err}): is it live? `stratus nodes` shows it"
        ))
    })
}

/// Drains (or undrains) this node: remembered across restarts, gossiped, and new
/// placements are refused while it lasts.
pub async fn set_own_draining(state: &AgentState, draining: bool) -> Result<(), ApiError> {
    let marker = draining_marker(state);
    let written = if draining {
        tokio::fs::write(&marker, b"drained by an operator\n").await
    } else {
        match tokio::fs::remove_file(&marker).await {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    written.map_err(|err| {
        ApiError::Unavailable(format!(
            "cannot record the drain in {}: {err}",
            marker.display()
        ))
    })?;
    state.draining.store(draining, Ordering::SeqCst);
    state.membership.set_draining(draining).await;
    // The reconcilers act on the next gossip change; wake this node's own at once.
    state.catalog_changed.notify_one();
    info!(draining, "drain state changed");
    Ok(())
}

/// The file whose presence means this node is drained.
pub fn draining_marker(state: &AgentState) -> std::path::PathBuf {
    state.config.data_dir.join("draining")
}

async fn current(state: &AgentState, app: &str) -> Result<AppRecord, ApiError> {
    state
        .catalog
        .lock()
        .await
        .record(app)
        .filter(|record| !record.deleted)
        .cloned()
        .ok_or_else(|| ApiError::UnknownApp(app.to_string()))
}

fn release_of<'a>(record: &'a AppRecord, app: &str) -> Result<&'a Release, ApiError> {
    record
        .release
        .as_ref()
        .ok_or_else(|| ApiError::Conflict(format!("{app} has no release yet: deploy it first")))
}

/// Makes sure this node holds the bundle of `release` (fetching it from a peer if not),
/// so it can hand it to keepers that lack it.
async fn ensure_bundle(state: &AgentState, release: &Release) -> Result<(), ApiError> {
    if state.s3.is_some() || state.blobs.has(&release.bundle.sha256) {
        return Ok(());
    }
    let view = state.view().await;
    let holders: Vec<std::net::SocketAddr> = view
        .live_nodes()
        .filter(|node| node.node_id != state.node_id())
        .filter_map(|node| node.identity.as_ref().map(|identity| identity.api_addr))
        .collect();
    crate::workload::supervisor::fetch_bundle(state, &release.bundle.sha256, &holders, "change")
        .await
        .map_err(ApiError::Unavailable)
}

/// Stores `record` here and on the app's keepers (sending the bundle to those that lack
/// it); acknowledged only once held by as many nodes as a deploy needs.
pub async fn commit(state: &AgentState, record: &AppRecord) -> Result<Vec<String>, ApiError> {
    let app = record.name.as_str();
    state
        .merge_record(record.clone())
        .await
        .map_err(crate::operations::deploy::store_unavailable)?;
    state.membership.publish_app(record).await;
    let view = state.view().await;
    let live: Vec<&str> = view.live_nodes().map(|n| n.node_id.as_str()).collect();
    let needed = KEEPERS.min(live.len().max(1));
    let mut holders = vec![state.node_id().to_string()];
    for target in keepers(app, &live, live.len()) {
        if holders.len() >= needed {
            break;
        }
        if target == state.node_id() {
            continue;
        }
        let Some(client) = view
            .node(&target)
            .and_then(|n| n.identity.as_ref())
            .and_then(|identity| state.peer(identity.api_addr))
        else {
            continue;
        };
        let mut held = client.hold_record(record).await;
        if held.as_ref().is_err_and(|err| err.status() == Some(409))
            && state.s3.is_none()
            && let Some(release) = &record.release
        {
            // The keeper lacks the bundle (keepers moved since the deploy): send it.
            held = match state.blobs.path(&release.bundle.sha256) {
                Ok(blob) => match client.put_blob(&release.bundle.sha256, &blob).await {
                    Ok(()) => client.hold_record(record).await,
                    Err(err) => Err(err),
                },
                Err(err) => {
                    warn!(app, error = %err, "no local copy of the bundle to send");
                    held
                }
            };
        }
        match held {
            Ok(()) => holders.push(target),
            Err(err) => warn!(app, node = %target, error = %err, "could not pass the change on"),
        }
    }
    if holders.len() < needed {
        return Err(ApiError::Unavailable(format!(
            "the change to {app} is held by only {} of {needed} nodes ({}), so it is not \
             acknowledged: it may still apply; check `stratus status {app}` or try again",
            holders.len(),
            holders.join(", ")
        )));
    }
    Ok(holders)
}
