//! Runs the replicas admitted on this node: gets the bundle (locally or from a holder,
//! checksum verified), unpacks it, starts the container, health-checks it, gossips its
//! record, restarts it with backoff when it dies, and stops it when the app is destroyed
//! or its release has been replaced by a healthy newer one.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use proto::api::{PlacementRequest, StopRequest};
use proto::build::{Builder, ImageRef};
use proto::catalog::Release;
use proto::{ContainerHealth, ContainerRecord, ContainerState};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::build::{image_layers, image_transfer};
use crate::bundle::UnpackLimits;
use crate::handles::AgentHandles;
use crate::workload::health::{HealthTracker, probe};
use crate::workload::replica::ReplicaHandle;
use crate::workload::restart_backoff::RestartBackoff;
use crate::workload::runtime::{ContainerSpec, RunningContainer};

const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn spawn_replica(agent: AgentHandles, request: PlacementRequest) {
    let (stop, stop_rx) = watch::channel(false);
    let handle = ReplicaHandle::new(
        request.app.clone(),
        request.release.number,
        request.replica,
        stop,
    );
    tokio::spawn(async move {
        agent
            .replicas
            .insert(request.placement_id.clone(), handle)
            .await;
        let id = request.placement_id.clone();
        run_replica(&agent, &request, stop_rx).await;
        // Record first, then the reservation: once the reservation is free the same
        // placement may be admitted again, and its new record must not be deleted.
        agent.membership.remove_container(&id).await;
        agent.replicas.remove(&id).await;
        agent.admission.release(&id).await;
        info!(placement = %id, "replica gone");
    });
}

async fn run_replica(
    agent: &AgentHandles,
    request: &PlacementRequest,
    mut stop: watch::Receiver<bool>,
) {
    let release = &request.release;
    let mut record = ContainerRecord {
        id: request.placement_id.clone(),
        app: request.app.clone(),
        release: release.number,
        replica: request.replica,
        addr: SocketAddr::new(advertise_ip(agent), 0),
        state: ContainerState::Starting,
        health: ContainerHealth::Unknown,
        detail: None,
    };
    agent.membership.publish_container(&record).await;
    // A built image holds the code: there is no bundle to unpack, only the image to load.
    let built = release
        .image
        .as_ref()
        .is_some_and(|image| image.builder != Builder::Image);
    let mut backoff = RestartBackoff::new();
    let bundle_dir = loop {
        if built {
            break PathBuf::new();
        }
        match prepare_bundle(agent, request).await {
            Ok(dir) => break dir,
            Err(reason) => {
                fail(agent, &mut record, reason).await;
                if wait_or_stop(&mut stop, backoff.next_delay()).await
                    || !still_wanted(agent, &record).await
                {
                    return;
                }
            }
        }
    };
    if let Some(image) = &release.image {
        let mut backoff = RestartBackoff::new();
        while let Err(reason) = ensure_image(agent, image).await {
            fail(agent, &mut record, reason).await;
            if wait_or_stop(&mut stop, backoff.next_delay()).await
                || !still_wanted(agent, &record).await
            {
                return;
            }
        }
    }
    let mut backoff = RestartBackoff::new();
    let env = loop {
        match replica_env(agent, request) {
            Ok(env) => break env,
            Err(reason) => {
                fail(agent, &mut record, reason).await;
                if wait_or_stop(&mut stop, backoff.next_delay()).await
                    || !still_wanted(agent, &record).await
                {
                    return;
                }
            }
        }
    };
    let spec = ContainerSpec {
        placement_id: request.placement_id.clone(),
        app: request.app.clone(),
        release: release.number,
        replica: request.replica,
        node_id: agent.node_id().to_string(),
        bundle_dir,
        image: match &release.image {
            Some(image) => image.id.clone(),
            None => release
                .manifest
                .image
                .clone()
                .unwrap_or_else(|| agent.config.default_image.clone()),
        },
        cmd: release.manifest.cmd.clone().unwrap_or_default(),
        built,
        read_only_root: release.manifest.read_only_root,
        user: release.manifest.user.clone(),
        port: release.manifest.port,
        env,
        cpu_millis: release.manifest.resources.cpu_millis,
        memory_bytes: release.manifest.resources.memory_bytes,
        tenant: request.tenant.clone(),
        isolation: request.isolation,
    };
    let mut backoff = RestartBackoff::new();
    loop {
        let container = match agent.replicas.runtime().start(&spec).await {
            Ok(container) => container,
            Err(err) => {
                fail(agent, &mut record, err.to_string()).await;
                if wait_or_stop(&mut stop, backoff.next_delay()).await
                    || !still_wanted(agent, &record).await
                {
                    return;
                }
                continue;
            }
        };
        agent
            .replicas
            .started(&spec.placement_id, crate::control::hlc::unix_ms())
            .await;
        record.addr = container.addr;
        record.state = ContainerState::Running;
        record.health = ContainerHealth::Unknown;
        record.detail = None;
        agent.membership.publish_container(&record).await;
        info!(placement = %spec.placement_id, addr = %container.addr, "replica started");
        match watch_container(agent, release, &container, &mut record, &mut stop).await {
            Outcome::Stop => {
                record.state = ContainerState::Stopping;
                agent.membership.publish_container(&record).await;
                tokio::time::sleep(drain_delay(agent)).await;
                crate::workload::logs::retain(agent, &record, &container.id).await;
                if let Err(err) = agent
                    .replicas
                    .runtime()
                    .stop(&container.id, STOP_GRACE)
                    .await
                {
                    warn!(placement = %spec.placement_id, error = %err, "cannot stop replica");
                }
                return;
            }
            Outcome::Exited(detail) => {
                agent.replicas.exited(&spec.placement_id).await;
                // The restart replaces the container and its output with it: keep it.
                crate::workload::logs::retain(agent, &record, &container.id).await;
                let tail = agent
                    .replicas
                    .runtime()
                    .logs(&container.id, 5)
                    .await
                    .unwrap_or_default();
                let detail = if tail.is_empty() {
                    detail
                } else {
                    format!("{detail}; last output: {}", tail.join(" | "))
                };
                fail(agent, &mut record, detail).await;
                if wait_or_stop(&mut stop, backoff.next_delay()).await
                    || !still_wanted(agent, &record).await
                {
                    let _ = agent
                        .replicas
                        .runtime()
                        .stop(&container.id, STOP_GRACE)
                        .await;
                    return;
                }
            }
        }
    }
}

/// The manifest's env plus who the replica is, so an app can tell (and log) where it runs.
/// The manifest's env, then the config vars (which win, as on Heroku), then Stratus's own.
fn replica_env(
    agent: &AgentHandles,
    request: &PlacementRequest,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut env = request.release.manifest.env.clone();
    let vars = crate::secrets::open(
        agent.config.keyring.as_ref(),
        &request.app,
        request.release.config.as_ref(),
    )
    .map_err(|err| format!("cannot read the app's config vars: {err}"))?;
    env.extend(vars);
    env.insert("STRATUS_APP".into(), request.app.clone());
    env.insert("STRATUS_RELEASE".into(), request.release.number.to_string());
    env.insert("STRATUS_REPLICA".into(), request.replica.to_string());
    env.insert("STRATUS_NODE".into(), agent.node_id().to_string());
    Ok(env)
}

enum Outcome {
    Stop,
    Exited(String),
}

/// Probes the replica until it must stop or its container is gone.
async fn watch_container(
    agent: &AgentHandles,
    release: &Release,
    container: &RunningContainer,
    record: &mut ContainerRecord,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let health = &release.manifest.health;
    let interval = Duration::from_millis(health.interval_ms);
    // Probe fast until the first answer, so a new replica takes traffic quickly.
    let mut next = Duration::from_millis(200);
    let mut tracker = HealthTracker::default();
    loop {
        if wait_or_stop(stop, next).await || !still_wanted(agent, record).await {
            return Outcome::Stop;
        }
        let result = probe(
            container.addr,
            health.path.as_deref(),
            Duration::from_millis(health.timeout_ms),
        )
        .await;
        let healthy = result.is_healthy();
        if tracker.observe(healthy).is_some() {
            record.health = tracker.health();
            record.detail = (!healthy).then(|| result.to_string());
            agent.membership.publish_container(record).await;
        }
        if tracker.health() == ContainerHealth::Healthy {
            next = interval;
        }
        if !healthy && let Ok(containers) = agent.replicas.runtime().list().await {
            let mine = containers.iter().find(|c| c.id == container.id);
            match mine {
                None => return Outcome::Exited("the container disappeared".into()),
                Some(c) if c.state == ContainerState::Exited => {
                    return Outcome::Exited(format!(
                        "exited with code {}",
                        c.exit_code.unwrap_or(-1)
                    ));
                }
                Some(_) => {}
            }
        }
    }
}

/// A replica stays while its app exists. Everything else (a newer release, a smaller
/// count, a surplus copy, a draining node) is the app's reconciler's call, sent as a stop
/// request: only it sees when the replacements are ready to take the traffic.
async fn still_wanted(agent: &AgentHandles, record: &ContainerRecord) -> bool {
    agent
        .catalog
        .read(|catalog| {
            catalog
                .record(&record.app)
                .is_none_or(|app| !app.deleted && app.release.is_some())
        })
        .await
}

/// Stops the replica `request` names, if this node runs it (the stop is graceful: see
/// [`run_replica`]). Unknown ids are ignored: the replica may be gone already.
pub async fn stop_replica(agent: &AgentHandles, request: &StopRequest) {
    if agent.replicas.stop(&request.placement_id).await {
        info!(placement = %request.placement_id, reason = %request.reason, "stop requested");
    } else {
        info!(placement = %request.placement_id, "stop requested for a replica not running here");
    }
}

/// How long a stopping replica keeps running after it left the routes: time for every
/// ingress to hear it is stopping and finish the requests it sent there.
fn drain_delay(agent: &AgentHandles) -> Duration {
    (agent.config.gossip_interval * 5).max(Duration::from_secs(1))
}

async fn fail(agent: &AgentHandles, record: &mut ContainerRecord, reason: String) {
    warn!(placement = %record.id, %reason, "replica failed");
    record.state = ContainerState::Exited;
    record.health = ContainerHealth::Unhealthy;
    record.detail = Some(reason);
    agent.membership.publish_container(record).await;
}

/// Waits `duration`; true if told to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(duration) => None,
        _ = stop.wait_for(|stop| *stop) => Some(true),
    };
    stopped.unwrap_or_else(|| *stop.borrow())
}

fn advertise_ip(agent: &AgentHandles) -> IpAddr {
    agent.config.advertise_addr.ip()
}

/// The release's folder on this node, fetching and unpacking the bundle if needed.
async fn prepare_bundle(
    agent: &AgentHandles,
    request: &PlacementRequest,
) -> Result<PathBuf, String> {
    let release = &request.release;
    let sha256 = release.bundle.sha256.clone();
    // Keyed by digest too: a release number must never reuse another bundle's folder.
    let short: String = release.bundle.sha256.chars().take(16).collect();
    let dir = agent
        .bundles
        .releases_dir()
        .join(&request.app)
        .join(format!("{}-{short}", release.number));
    if dir.is_dir() {
        return Ok(dir);
    }
    if !agent.bundles.local().has(&sha256) {
        fetch_blob(agent, request).await?;
    }
    let blobs = agent.bundles.local().clone();
    let target = dir.clone();
    if let Some(parent) = dir.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
    }
    tokio::task::spawn_blocking(move || {
        blobs.unpack_release(&sha256, &target, UnpackLimits::default())
    })
    .await
    .map_err(|err| err.to_string())?
    .map(|_| ())
    .or_else(|err| {
        // Another replica of the same release on this node may have unpacked it first.
        if dir.is_dir() {
            Ok(())
        } else {
            Err(err.to_string())
        }
    })?;
    Ok(dir)
}

/// Makes sure this node's Docker has a release's image, fetching the blobs it lacks from
/// the store or a holder (see [`crate::build::image_transfer`]); old release images are
/// collected after a load.
pub async fn ensure_image(agent: &AgentHandles, image: &ImageRef) -> Result<(), String> {
    let docker = agent.builds.docker()?.clone();
    if image_layers::has_image(&docker, &image.id).await {
        return Ok(());
    }
    image_transfer::ensure(agent, image).await?;
    let running = crate::build::job::running_releases(agent).await;
    crate::build::image_gc::collect(&docker, &running, agent.builds.keep_releases()).await;
    Ok(())
}

/// Fetches the bundle of a placement from any holder, verifying it.
async fn fetch_blob(agent: &AgentHandles, request: &PlacementRequest) -> Result<(), String> {
    fetch_bundle(
        agent,
        &request.release.bundle.sha256,
        &request.holders,
        &request.placement_id,
    )
    .await
}

/// Fetches bundle `sha256` from the S3 store if there is one, else from any of `holders`,
/// verifying it; a corrupt copy is discarded and the next holder tried. `tag` names the
/// temporary file, so concurrent fetches do not collide.
pub async fn fetch_bundle(
    agent: &AgentHandles,
    sha256: &str,
    holders: &[SocketAddr],
    tag: &str,
) -> Result<(), String> {
    let sha256 = &sha256.to_string();
    let tmp_dir = agent.bundles.uploads_dir();
    tokio::fs::create_dir_all(&tmp_dir)
        .await
        .map_err(|err| format!("cannot create {}: {err}", tmp_dir.display()))?;
    let tmp = tmp_dir.join(format!(
        "fetch-{tag}-{}.part",
        &sha256[..sha256.len().min(16)]
    ));
    let mut errors = Vec::new();
    if let Some(s3) = agent.bundles.s3() {
        match s3.fetch_verified(sha256, &tmp).await {
            Ok(_) => match store_fetched(agent, &tmp, sha256).await {
                Ok(()) => return Ok(()),
                Err(err) => errors.push(format!("{}: {err}", s3.config().url())),
            },
            Err(err) => errors.push(format!("{}: {err}", s3.config().url())),
        }
    }
    for holder in holders {
        let Some(client) = agent.peers.client(*holder) else {
            continue;
        };
        match client.get_blob(sha256, &tmp).await {
            Ok(_) => match store_fetched(agent, &tmp, sha256).await {
                Ok(()) => return Ok(()),
                Err(err) => errors.push(format!("{holder}: {err}")),
            },
            Err(err) => errors.push(format!("{holder}: {err}")),
        }
    }
    Err(format!(
        "cannot fetch bundle {sha256} from any holder: {}",
        errors.join("; ")
    ))
}

/// Files a fetched bundle in the local store (the download checked its checksum as it
/// wrote it) and drops the temp.
async fn store_fetched(
    agent: &AgentHandles,
    tmp: &std::path::Path,
    sha256: &str,
) -> Result<(), String> {
    let blobs = agent.bundles.local().clone();
    let (tmp_path, digest) = (tmp.to_path_buf(), sha256.to_string());
    let stored = tokio::task::spawn_blocking(move || blobs.put_hashed(&tmp_path, &digest))
        .await
        .map_err(|err| err.to_string())?;
    let _ = tokio::fs::remove_file(tmp).await;
    stored.map(|_| ()).map_err(|err| err.to_string())
}

/// After an agent restart: takes back the containers its predecessor left running (found
/// by their labels) instead of letting the cluster start duplicates, and removes those of
/// apps or releases this node does not know.
pub async fn adopt_existing(agent: AgentHandles) {
    let containers = match agent.replicas.runtime().list().await {
        Ok(containers) => containers,
        Err(err) => {
            warn!(error = %err, "cannot list containers to adopt");
            return;
        }
    };
    for container in containers {
        let record = agent.catalog.live_record(&container.app).await;
        let release = match &record {
            None => None,
            Some(_) => agent
                .catalog
                .releases(&container.app)
                .await
                .into_iter()
                .find(|release| release.number == container.release),
        };
        let Some(release) = release else {
            info!(container = %container.id, app = %container.app, "removing a container of an unknown app or release");
            if let Err(err) = agent
                .replicas
                .runtime()
                .stop(&container.id, STOP_GRACE)
                .await
            {
                warn!(container = %container.id, error = %err, "cannot remove container");
            }
            continue;
        };
        let needs = crate::control::scheduler::Needs {
            cpu_millis: release.manifest.resources.cpu_millis,
            mem_bytes: release.manifest.resources.memory_bytes,
        };
        // Only the first sight of a placement: the same id twice is one replica.
        if agent.admission.adopt(&container.placement_id, needs).await != Ok(true) {
            continue;
        }
        info!(placement = %container.placement_id, "adopting a container left by the previous agent");
        spawn_replica(
            agent.clone(),
            PlacementRequest {
                placement_id: container.placement_id.clone(),
                app: container.app.clone(),
                release,
                replica: container.replica,
                holders: Vec::new(),
                isolation: agent
                    .tenancy
                    .isolation(record.as_ref().and_then(|record| record.tenant.as_deref())),
                // The tenant's isolation again, not the default: a restart of this replica
                // recreates its container, which must not leave gVisor for runc.
                tenant: record.and_then(|record| record.tenant),
            },
        );
    }
}
