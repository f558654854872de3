//! Accepting a deploy on any node: check the bundle, file it under its checksum, copy it
//! and the new release record to enough nodes, and only then acknowledge.
//!
//! A deploy is acknowledged once its release record and its bundle are durably held by
//! [`KEEPERS`] nodes (all live nodes if fewer), so stopping any two nodes loses no
//! acknowledged release.

use std::collections::{BTreeMap, BTreeSet};

use api::{ApiError, BuildEvents, Principal, Upload};
use proto::api::BuildRequest;
use proto::api::{AppSummary, AppView, AppsResponse, DeployAccepted, ReplicaView};
use proto::build::{BuildEvent, BuildSummary, Builder, KEPT_BUILDS};
use proto::catalog::{AppRecord, BlobRef, Release};
use proto::manifest::{MANIFEST_FILE, Manifest, validate_app_name};
use tracing::{info, warn};

use crate::build::Folder;
use crate::build::detect::{Detection, detect};
use crate::build::recipe::{Asked, recipe};
use crate::bundle::{BundleError, UnpackLimits, inspect_and_unpack};
use crate::cluster::membership::ClusterView;
use crate::control::catalog::{KEEPERS, keepers};
use crate::control::hlc::unix_ms;
use crate::handles::AgentHandles;
use crate::operations::changes::{commit, release_number, store_unavailable};
use crate::operations::{access, build_release, quota};

pub async fn accept(
    agent: &AgentHandles,
    caller: &Principal,
    app: &str,
    upload: Upload,
    events: BuildEvents,
) -> Result<DeployAccepted, ApiError> {
    validate_app_name(app).map_err(ApiError::BadRequest)?;
    let tenant = access::deploy_owner(caller, agent.catalog.live_record(app).await.as_ref(), app)?;
    let (manifest, detection) = inspect(agent, &upload).await?;
    if manifest.name != app {
        return Err(ApiError::BadRequest(format!(
            "the bundle's stratus.toml names the app {:?}, not {app:?}: deploy it as {:?} or fix `name`",
            manifest.name, manifest.name
        )));
    }
    let others = agent.catalog.records().await;
    access::check_domains(caller, tenant.as_deref(), app, &manifest, &others)?;
    quota::check_deploy(agent, tenant.as_deref(), app, &manifest).await?;
    if detection.builder == Builder::Image && manifest.cmd.is_none() {
        return Err(ApiError::InvalidManifest(format!(
            "invalid {MANIFEST_FILE}: cmd: missing, and no builder applies ({}): set `cmd = \"...\"`, \
             add a Procfile with a `web:` line, or add what a builder starts from (a Dockerfile, \
             requirements.txt, package.json or index.html)",
            detection.reason
        )));
    }
    let _ = events.send(BuildEvent::Step {
        text: format!("builder: {} ({})", detection.builder, detection.reason),
    });
    let sha256 = upload.sha256.clone();
    let size = upload.size;
    let blob_path = store_blob(agent, upload).await?;
    if let Some(s3) = agent.bundles.s3() {
        // In S3 mode the bucket is the durable copy; peers then need only the record.
        s3.put_file(&blob_path, &sha256).await.map_err(|err| {
            ApiError::Unavailable(format!(
                "cannot store the bundle in {}: {err}",
                s3.config().url()
            ))
        })?;
    }

    let view = agent.view().await;
    let live: Vec<&str> = view
        .live_nodes()
        .map(|node| node.node_id.as_str())
        .collect();
    let needed = KEEPERS.min(live.len().max(1));
    let number = release_number(agent, &view, app, &live).await;
    let bundle = BlobRef {
        sha256: sha256.clone(),
        size,
    };
    let keepers_of_app = keepers(app, &live, needed);
    let (image, build) = match detection.builder {
        Builder::Image => match &manifest.image {
            Some(named) if agent.builds.can_build() => {
                let image = build_release::named_image(agent, named, &keepers_of_app, &events)
                    .await
                    .map_err(ApiError::BuildFailed)?;
                (Some(image), None)
            }
            _ => (None, None),
        },
        builder => {
            let request = BuildRequest {
                app: app.to_string(),
                release: number,
                bundle: bundle.clone(),
                manifest: manifest.clone(),
                builder,
                reason: detection.reason.clone(),
                keepers: keepers_of_app.clone(),
            };
            let summary =
                build_release::build_release(agent, &request, tenant.as_deref(), &events).await;
            if let Some(error) = &summary.error {
                record_failed_build(agent, tenant.clone(), app, &manifest, &summary).await;
                return Err(ApiError::BuildFailed(format!(
                    "release {number} of {app} was not built, and nothing was rolled out (the previous release, if any, keeps serving): {error}. \
                     `stratus logs {app} --build {number}` shows the whole output"
                )));
            }
            (summary.image.clone(), Some(summary))
        }
    };
    // A build takes a while, and nodes may have come or gone meanwhile: the holders are
    // chosen from the cluster as it is now.
    let view = if build.is_some() {
        agent.view().await
    } else {
        view
    };
    let live: Vec<&str> = view
        .live_nodes()
        .map(|node| node.node_id.as_str())
        .collect();
    let needed = KEEPERS.min(live.len().max(1));
    // Keepers first (they will publish the record), then any other live node as fallback.
    let targets: Vec<String> = keepers(app, &live, live.len())
        .into_iter()
        .filter(|node| node != agent.node_id())
        .collect();
    let previous = agent.catalog.live_record(app).await;
    let previous_failures = previous
        .as_ref()
        .map(|record| record.failed.clone())
        .unwrap_or_default();
    // Config vars stay across deploys, as on Heroku: only `stratus config` changes them.
    let config = previous
        .as_ref()
        .and_then(|record| record.release.as_ref())
        .and_then(|release| release.config.clone());
    let stamp = agent.catalog.stamp().await;
    let domain_claims = access::domain_claims(&manifest, previous.as_ref(), &stamp);
    let mut builds = previous.map(|record| record.builds).unwrap_or_default();
    if let Some(summary) = &build {
        keep_build(&mut builds, summary.clone());
    }
    let record = AppRecord {
        name: app.to_string(),
        stamp,
        tenant: tenant.clone(),
        domain_claims,
        deleted: false,
        replicas: manifest.replicas,
        release: Some(Release {
            number,
            bundle,
            manifest,
            created_at_ms: unix_ms(),
            created_on: agent.node_id().to_string(),
            note: None,
            image,
            config,
        }),
        failed: previous_failures,
        builds,
    };
    let mut holders = vec![agent.node_id().to_string()];
    agent
        .catalog
        .merge(record.clone())
        .await
        .map_err(store_unavailable)?;
    agent.membership.publish_app(&record).await;
    for target in targets {
        if holders.len() >= needed {
            break;
        }
        match replicate_to(agent, &view, &target, &record, &blob_path).await {
            Ok(()) => holders.push(target),
            Err(err) => warn!(app, node = %target, error = %err, "could not replicate the release"),
        }
    }
    if holders.len() < needed {
        return Err(ApiError::Unavailable(format!(
            "release {number} of {app} is held by only {} of {needed} nodes ({}), so it is not \
             acknowledged: it may still roll out; check `stratus status {app}` or deploy again",
            holders.len(),
            holders.join(", ")
        )));
    }
    info!(app, release = number, %sha256, holders = ?holders, "deploy accepted");
    Ok(DeployAccepted {
        app: app.to_string(),
        release: number,
        sha256,
        size,
        holders,
        status_url: format!("/v1/apps/{app}"),
        build,
    })
}

/// The manifest, checked, and the builder the folder takes. The bundle is unpacked into a
/// scratch folder for this (the builders read its files) and the folder removed.
async fn inspect(agent: &AgentHandles, upload: &Upload) -> Result<(Manifest, Detection), ApiError> {
    let zip = upload.path().to_path_buf();
    let scratch_root = agent.bundles.uploads_dir().to_path_buf();
    let bases = agent.builds.bases().clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&scratch_root).map_err(|err| {
            ApiError::Internal(format!("cannot create {}: {err}", scratch_root.display()))
        })?;
        let scratch = tempfile::Builder::new()
            .prefix("inspect-")
            .tempdir_in(&scratch_root)
            .map_err(|err| ApiError::Internal(format!("cannot create a scratch folder: {err}")))?;
        let folder = scratch.path().join("app");
        let manifest = inspect_and_unpack(&zip, Some(&folder), UnpackLimits::default())
            .map_err(bundle_error)?;
        let tree = Folder(&folder);
        let detection = detect(&tree, manifest.build.builder, manifest.cmd.is_some());
        // What the builder needs from the files is checked here, before anything is
        // stored or placed: a package.json that does not parse fails in a second.
        if detection.builder != Builder::Image {
            let asked = Asked {
                runtime: manifest.runtime.as_deref(),
                cmd: manifest.cmd.as_deref(),
            };
            recipe(detection.builder, &tree, &asked, &bases).map_err(|err| {
                ApiError::BuildFailed(format!(
                    "the {} builder cannot build this app ({}): {err}",
                    detection.builder, detection.reason
                ))
            })?;
        }
        Ok((manifest, detection))
    })
    .await
    .map_err(|err| ApiError::Internal(err.to_string()))?
}

/// Adds a build's summary to an app's, keeping the last [`KEPT_BUILDS`].
pub(crate) fn keep_build(builds: &mut BTreeMap<u64, BuildSummary>, summary: BuildSummary) {
    builds.insert(summary.release, summary);
    while builds.len() > KEPT_BUILDS {
        builds.pop_first();
    }
}

/// A failed build is recorded (its summary, and the release among the failed ones) without
/// touching the release that runs: `stratus builds` and `stratus releases` show it.
async fn record_failed_build(
    agent: &AgentHandles,
    tenant: Option<String>,
    app: &str,
    manifest: &Manifest,
    summary: &BuildSummary,
) {
    let previous = agent.catalog.live_record(app).await;
    let mut record = previous.unwrap_or_else(|| AppRecord {
        name: app.to_string(),
        stamp: proto::catalog::Stamp {
            wall_ms: 0,
            counter: 0,
            node_id: String::new(),
        },
        tenant,
        deleted: false,
        release: None,
        replicas: manifest.replicas,
        failed: BTreeMap::new(),
        builds: BTreeMap::new(),
        domain_claims: BTreeMap::new(),
    });
    record.stamp = agent.catalog.stamp().await;
    record.failed.insert(
        summary.release,
        format!(
            "build failed: {}",
            summary.error.clone().unwrap_or_default()
        ),
    );
    keep_build(&mut record.builds, summary.clone());
    if let Err(err) = commit(agent, &record).await {
        warn!(app, error = %err, "could not record the failed build on enough nodes");
    }
}

async fn replicate_to(
    agent: &AgentHandles,
    view: &ClusterView,
    node_id: &str,
    record: &AppRecord,
    blob: &std::path::Path,
) -> Result<(), String> {
    let api_addr = view
        .node(node_id)
        .and_then(|node| node.identity.as_ref())
        .map(|identity| identity.api_addr)
        .ok_or_else(|| format!("no API address known for {node_id}"))?;
    let client = agent.peers.client(api_addr).ok_or("invalid peer address")?;
    let release = record.release.as_ref().ok_or("record without release")?;
    if agent.bundles.s3().is_none() {
        client
            .put_blob(&release.bundle.sha256, blob)
            .await
            .map_err(|err| err.to_string())?;
    }
    client
        .hold_record(record)
        .await
        .map_err(|err| err.to_string())
}

/// Files an uploaded bundle under its digest; returns where it now lives.
pub async fn store_blob(
    agent: &AgentHandles,
    upload: Upload,
) -> Result<std::path::PathBuf, ApiError> {
    let sha256 = upload.sha256.clone();
    let blobs = agent.bundles.local().clone();
    tokio::task::spawn_blocking(move || {
        let tmp = upload.keep();
        let stored = blobs.put_verified(&tmp, &sha256);
        let _ = std::fs::remove_file(&tmp);
        stored
    })
    .await
    .map_err(|err| ApiError::Internal(err.to_string()))?
    .map_err(bundle_error)
}

/// Node-to-node: store a bundle copy sent by the accepting node.
pub async fn put_blob(agent: &AgentHandles, sha256: &str, upload: Upload) -> Result<(), ApiError> {
    if upload.sha256 != sha256 {
        return Err(ApiError::BadRequest(format!(
            "bundle checksum mismatch: the URL says {sha256}, the bytes hash to {}; send it again",
            upload.sha256
        )));
    }
    store_blob(agent, upload).await.map(|_| ())
}

/// Node-to-node: persist an app record, durably, before answering.
pub async fn hold_record(agent: &AgentHandles, record: AppRecord) -> Result<(), ApiError> {
    validate_app_name(&record.name).map_err(ApiError::BadRequest)?;
    let bundle_held = match (&record.release, agent.bundles.s3()) {
        (None, _) => true,
        (Some(release), None) => agent.bundles.local().has(&release.bundle.sha256),
        (Some(release), Some(s3)) => s3.has(&release.bundle.sha256).await.unwrap_or(false),
    };
    if let Some(release) = &record.release
        && !bundle_held
    {
        return Err(ApiError::Conflict(format!(
            "bundle {} of {} is not on this node: send the blob first",
            release.bundle.sha256, record.name
        )));
    }
    agent
        .catalog
        .merge(record.clone())
        .await
        .map_err(store_unavailable)?;
    // Keepers publish; a fallback holder only stores (catalog_sync publishes what it keeps).
    let view = agent.view().await;
    let live: Vec<&str> = view
        .live_nodes()
        .map(|node| node.node_id.as_str())
        .collect();
    if keepers(&record.name, &live, KEEPERS)
        .iter()
        .any(|k| k == agent.node_id())
    {
        agent.membership.publish_app(&record).await;
    }
    Ok(())
}

/// `DELETE /v1/apps/{app}`: a tombstone, so every node stops the app's replicas and a node
/// that was away learns the app is gone.
pub async fn destroy(agent: &AgentHandles, app: &str) -> Result<AppView, ApiError> {
    let Some(existing) = agent.catalog.live_record(app).await else {
        return Err(ApiError::UnknownApp(app.to_string()));
    };
    let tombstone = AppRecord {
        stamp: agent.catalog.stamp().await,
        deleted: true,
        release: None,
        replicas: 0,
        ..existing
    };
    agent
        .catalog
        .merge(tombstone.clone())
        .await
        .map_err(store_unavailable)?;
    agent.membership.publish_app(&tombstone).await;
    let view = agent.view().await;
    let live: Vec<&str> = view
        .live_nodes()
        .map(|node| node.node_id.as_str())
        .collect();
    for keeper in keepers(app, &live, KEEPERS) {
        if keeper == agent.node_id() {
            continue;
        }
        let Some(addr) = view
            .node(&keeper)
            .and_then(|n| n.identity.as_ref())
            .map(|i| i.api_addr)
        else {
            continue;
        };
        if let Some(client) = agent.peers.client(addr)
            && let Err(err) = client.hold_record(&tombstone).await
        {
            warn!(app, node = %keeper, error = %err, "could not pass on the destroy; gossip will");
        }
    }
    info!(app, "app destroyed");
    app_view(agent, app, true).await
}

/// `GET /v1/apps`: the apps the caller may see.
pub async fn apps(agent: &AgentHandles, caller: &Principal) -> AppsResponse {
    let view = agent.view().await;
    let apps = agent
        .catalog
        .read(|catalog| {
            catalog
                .apps()
                .filter(|record| caller.may_touch(record.tenant.as_deref()))
                .map(|record| {
                    let release = record.release.as_ref().map(|release| release.number);
                    let healthy = view
                        .containers
                        .iter()
                        .filter(|c| {
                            c.record.app == record.name
                                && Some(c.record.release) == release
                                && c.record.is_routable()
                        })
                        .map(|c| c.record.replica)
                        .collect::<BTreeSet<_>>()
                        .len() as u32;
                    AppSummary {
                        name: record.name.clone(),
                        release,
                        replicas_desired: record.replicas,
                        replicas_healthy: healthy,
                    }
                })
                .collect()
        })
        .await;
    AppsResponse { apps }
}

/// `GET /v1/apps/{app}`; `allow_deleted` for the answer to a destroy.
pub async fn app_view(
    agent: &AgentHandles,
    app: &str,
    allow_deleted: bool,
) -> Result<AppView, ApiError> {
    let view = agent.view().await;
    let record = agent
        .catalog
        .record(app)
        .await
        .filter(|record| allow_deleted || !record.deleted)
        .ok_or_else(|| ApiError::UnknownApp(app.to_string()))?;
    let release_number = record.release.as_ref().map(|release| release.number);
    let failure = view
        .failures
        .iter()
        .find(|failure| failure.app == app && Some(failure.release) == release_number)
        .map(|failure| failure.reason.clone());
    let mut replicas: Vec<ReplicaView> = view
        .containers
        .iter()
        .filter(|c| c.record.app == app)
        .map(|c| ReplicaView {
            node_id: c.node_id.clone(),
            container_id: c.record.id.clone(),
            release: c.record.release,
            replica: c.record.replica,
            addr: c.record.addr,
            state: c.record.state,
            health: c.record.health,
            detail: c.record.detail.clone(),
            usage: None,
        })
        .collect();
    replicas.sort_by(|a, b| {
        (a.release, a.replica, &a.node_id).cmp(&(b.release, b.replica, &b.node_id))
    });
    Ok(AppView {
        releases: agent
            .catalog
            .releases(app)
            .await
            .iter()
            .map(|release| release.number)
            .collect(),
        name: record.name,
        replicas_desired: record.replicas,
        release: record.release,
        replicas,
        failure,
        failed_releases: record.failed,
    })
}

fn bundle_error(err: BundleError) -> ApiError {
    match err {
        BundleError::InvalidManifest(errors) => ApiError::InvalidManifest(errors.to_string()),
        err if err.is_bad_bundle() => ApiError::InvalidBundle(err.to_string()),
        err => ApiError::Internal(err.to_string()),
    }
}
