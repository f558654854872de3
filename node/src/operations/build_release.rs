//! The accepting node's side of a build: place it (see [`crate::build::placement`]), run it
//! here or on a peer, pass its events on to the deploy's stream, and when the building node
//! dies, leaves the cluster or falls silent, place it again elsewhere. It ends with a
//! summary, never a hang: every build has a time limit, and a peer must send something at
//! least every [`SILENCE_LIMIT`].

use std::sync::Arc;
use std::time::Duration;

use api::{ApiError, LineStream};
use futures_util::StreamExt;
use proto::api::BuildRequest;
use proto::api::{BuildsResponse, NodeStatus};
use proto::build::{BuildEvent, BuildSummary, CacheUse, ImageRef};
use proto::events::Change;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use crate::build::image_pull::{self, ImageSource};
use crate::build::job::{self, SILENCE_LIMIT};
use crate::build::placement::build_nodes;
use crate::build::{image_layers, image_transfer};
use crate::cluster::membership::ClusterView;
use crate::control::hlc::unix_ms;
use crate::control::scheduler::Needs;
use crate::handles::AgentHandles;

/// Nodes a build is tried on before it is reported failed.
const MAX_ATTEMPTS: usize = 3;

/// How often a building node says it is alive while a step is silent.
pub const ALIVE_EVERY: Duration = Duration::from_secs(5);

/// What happened to one attempt.
enum Attempt {
    Finished(Box<BuildSummary>),
    /// The node would not take it (no room, draining): try the next, nothing was built.
    Refused(String),
    /// The node died, left or fell silent mid-build.
    Lost(String),
}

/// Builds `request` somewhere in the cluster; the summary's `error` says if it failed.
pub async fn build_release(
    agent: &AgentHandles,
    request: &BuildRequest,
    tenant: Option<&str>,
    events: &UnboundedSender<BuildEvent>,
) -> BuildSummary {
    let started = unix_ms();
    let resources = request.manifest.build.resources;
    let needs = Needs {
        cpu_millis: resources.cpu_millis,
        mem_bytes: resources.memory_bytes,
    };
    let cached_on = agent
        .catalog
        .live_record(&request.app)
        .await
        .and_then(|record| {
            record
                .builds
                .values()
                .rev()
                .find(|build| build.error.is_none() && build.builder == request.builder)
                .map(|build| build.node.clone())
        });
    let mut excluded: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for _ in 0..MAX_ATTEMPTS {
        let view = agent.view().await;
        let candidates: Vec<_> = crate::control::candidates::candidates(&view, &request.app)
            .into_iter()
            .filter(|candidate| {
                view.node(&candidate.node_id)
                    .and_then(|node| node.identity.as_ref())
                    .is_some_and(|identity| identity.builds)
            })
            .collect();
        let plan = match build_nodes(
            &candidates,
            needs,
            cached_on.as_deref(),
            &excluded,
            &mut rand::rng(),
        ) {
            Ok(plan) => plan,
            // The view may be a moment behind (a build or replica that just ended): each
            // node's own ledger has the last word, so ask them anyway, least reserved first.
            Err(err) => {
                problems.push(format!(
                    "{err} (a build reserves its [build] cpu and memory; nodes able to build: {})",
                    candidates.len()
                ));
                let mut fallback: Vec<_> = candidates
                    .iter()
                    .filter(|candidate| candidate.live && !excluded.contains(&candidate.node_id))
                    .collect();
                fallback.sort_by_key(|candidate| candidate.reserved_cpu_millis);
                fallback.into_iter().map(|c| c.node_id.clone()).collect()
            }
        };
        if plan.is_empty() {
            break;
        }
        let mut lost = false;
        for node in plan {
            let reason = if cached_on.as_deref() == Some(node.as_str()) {
                "it built this app before: its dependency layer is likely cached"
            } else {
                "the least-burdened node with room for the build"
            };
            let attempt = attempt_on(agent, &node, request, tenant, reason, events).await;
            match attempt {
                Attempt::Finished(summary) => return *summary,
                Attempt::Refused(why) => problems.push(why),
                Attempt::Lost(why) => {
                    let _ = events.send(BuildEvent::Step {
                        text: format!("{why}: placing the build again"),
                    });
                    problems.push(why);
                    excluded.push(node);
                    lost = true;
                    break;
                }
            }
        }
        if !lost {
            break;
        }
    }
    BuildSummary {
        release: request.release,
        builder: request.builder,
        reason: request.reason.clone(),
        node: String::new(),
        started_at_ms: started,
        duration_ms: unix_ms().saturating_sub(started),
        cache: CacheUse::None,
        cache_key: None,
        error: Some(format!(
            "no node could build release {}: {}",
            request.release,
            problems.join("; ")
        )),
        log: None,
        image: None,
        dependencies: None,
    }
}

/// Tells the deploy's stream and this node's events where the build runs: only the
/// accepting node sees a build start (the others see it once it is recorded).
fn announce_placed(
    agent: &AgentHandles,
    request: &BuildRequest,
    tenant: Option<&str>,
    node: &str,
    reason: &str,
    events: &UnboundedSender<BuildEvent>,
) {
    let _ = events.send(BuildEvent::Placed {
        node: node.to_string(),
        reason: reason.to_string(),
    });
    let started = Change::BuildStarted {
        app: request.app.clone(),
        node: node.to_string(),
        builder: request.builder.to_string(),
    };
    agent
        .events
        .publish(vec![started], |_| tenant.map(str::to_string));
}

async fn attempt_on(
    agent: &AgentHandles,
    node: &str,
    request: &BuildRequest,
    tenant: Option<&str>,
    reason: &str,
    events: &UnboundedSender<BuildEvent>,
) -> Attempt {
    if node == agent.node_id() {
        let reservation = match job::reserve(agent, request).await {
            Ok(reservation) => reservation,
            Err(why) => return Attempt::Refused(why),
        };
        announce_placed(agent, request, tenant, node, reason, events);
        return Attempt::Finished(Box::new(
            job::run(agent, request, reservation, events.clone()).await,
        ));
    }
    let view = agent.view().await;
    let Some(client) = view
        .node(node)
        .and_then(|node| node.identity.as_ref())
        .and_then(|identity| agent.peers.client(identity.api_addr))
    else {
        return Attempt::Refused(format!("no API address known for {node}"));
    };
    let mut stream = match client.build(request).await {
        Ok(stream) => stream,
        Err(err) if err.status().is_some() => return Attempt::Refused(err.to_string()),
        Err(err) => return Attempt::Lost(format!("{node} did not answer ({err})")),
    };
    announce_placed(agent, request, tenant, node, reason, events);
    let mut views = agent.membership.subscribe().await;
    let mut silent_until = Instant::now() + SILENCE_LIMIT;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(silent_until, stream.next()) => next,
            () = leaves(&mut views, node) => {
                return Attempt::Lost(format!("{node} left the cluster mid-build"));
            }
        };
        silent_until = Instant::now() + SILENCE_LIMIT;
        match next {
            Err(_) => {
                return Attempt::Lost(format!(
                    "{node} sent nothing for {} s",
                    SILENCE_LIMIT.as_secs()
                ));
            }
            Ok(None) => return Attempt::Lost(format!("{node} stopped answering mid-build")),
            Ok(Some(Err(err))) => {
                warn!(node, error = %err, "build stream broke");
                return Attempt::Lost(format!("{node} stopped answering mid-build"));
            }
            Ok(Some(Ok(BuildEvent::Finished { summary }))) => {
                return Attempt::Finished(summary);
            }
            Ok(Some(Ok(BuildEvent::Alive { .. }))) => {}
            Ok(Some(Ok(event))) => {
                let _ = events.send(event);
            }
        }
    }
}

/// Resolves once `node` has announced that it leaves the cluster (a graceful shutdown):
/// its build will not finish, even while its stream still flows (its API lets open answers
/// run on for a grace period). A node only suspected dead is left to its stream and
/// [`SILENCE_LIMIT`]: its stream may well be alive.
async fn leaves(views: &mut watch::Receiver<Arc<ClusterView>>, node: &str) {
    loop {
        let left = views
            .borrow_and_update()
            .node(node)
            .is_some_and(|seen| seen.status == NodeStatus::Left);
        if left {
            return;
        }
        if views.changed().await.is_err() {
            // The agent is stopping: the stream decides.
            std::future::pending::<()>().await;
        }
    }
}

/// Node-to-node: build `request` here. Refused at once (503) when this node cannot take
/// it, so the placing node asks the next; otherwise the events as they come, an `alive`
/// every [`ALIVE_EVERY`] of silence, and last the `finished` summary.
pub async fn serve_build(
    agent: &AgentHandles,
    request: BuildRequest,
) -> Result<LineStream, ApiError> {
    proto::manifest::validate_app_name(&request.app).map_err(ApiError::BadRequest)?;
    let reservation = job::reserve(agent, &request)
        .await
        .map_err(ApiError::Unavailable)?;
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    let builder = agent.clone();
    // The build goes on if the placing node goes away: its image and log are kept, and
    // the build is not left half-done.
    let finished =
        tokio::spawn(async move { job::run(&builder, &request, reservation, events).await });
    Ok(Box::pin(with_heartbeat(received, finished)))
}

/// The job's events as JSON lines, an `alive` after each [`ALIVE_EVERY`] of silence, and
/// the summary as the last line.
fn with_heartbeat(
    received: tokio::sync::mpsc::UnboundedReceiver<BuildEvent>,
    finished: tokio::task::JoinHandle<BuildSummary>,
) -> impl futures_util::Stream<Item = String> + Send {
    let started = tokio::time::Instant::now();
    let events = futures_util::stream::unfold(received, move |mut received| async move {
        let event = match tokio::time::timeout(ALIVE_EVERY, received.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(_) => BuildEvent::Alive {
                elapsed_ms: started.elapsed().as_millis() as u64,
            },
        };
        Some((event_line(&event), received))
    });
    let last = futures_util::stream::once(async move {
        let summary = match finished.await {
            Ok(summary) => summary,
            Err(err) => BuildSummary {
                release: 0,
                builder: proto::build::Builder::Image,
                reason: String::new(),
                node: String::new(),
                started_at_ms: 0,
                duration_ms: 0,
                cache: CacheUse::None,
                cache_key: None,
                error: Some(format!("the build task failed: {err}")),
                log: None,
                image: None,
                dependencies: None,
            },
        };
        event_line(&BuildEvent::Finished {
            summary: Box::new(summary),
        })
    });
    events.chain(last)
}

fn event_line(event: &BuildEvent) -> String {
    serde_json::to_string(event).unwrap_or_else(|err| {
        format!(r#"{{"event":"line","text":"(an event that does not serialize: {err})"}}"#)
    })
}

/// `stratus builds APP`: the builds in the app's record, newest first.
pub async fn builds(agent: &AgentHandles, app: &str) -> Result<BuildsResponse, ApiError> {
    let record = agent
        .catalog
        .live_record(app)
        .await
        .ok_or_else(|| ApiError::UnknownApp(app.to_string()))?;
    Ok(BuildsResponse {
        app: app.to_string(),
        builds: record.builds.into_values().rev().collect(),
    })
}

/// `stratus logs APP --build N`: the build's whole output, from this node's copy or a
/// holder's (checked against its digest).
pub async fn build_log(
    agent: &AgentHandles,
    app: &str,
    release: u64,
) -> Result<LineStream, ApiError> {
    let record = agent
        .catalog
        .live_record(app)
        .await
        .ok_or_else(|| ApiError::UnknownApp(app.to_string()))?;
    let summary = record.builds.get(&release).ok_or_else(|| {
        ApiError::NotFound {
            method: "GET".into(),
            path: format!("no build of release {release} of {app} is recorded: `stratus builds {app}` lists them"),
        }
    })?;
    let log = summary.log.clone().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "the build of release {release} kept no output (it ended before any): {}",
            summary.error.clone().unwrap_or_default()
        ))
    })?;
    if !agent.bundles.local().has(&log.sha256) {
        let holders = job::live_api_addrs(agent).await;
        crate::workload::supervisor::fetch_bundle(agent, &log.sha256, &holders, "build-log")
            .await
            .map_err(ApiError::Unavailable)?;
    }
    let path = agent
        .bundles
        .local()
        .path(&log.sha256)
        .map_err(ApiError::from_service)?;
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|err| ApiError::Internal(format!("cannot read {}: {err}", path.display())))?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    Ok(Box::pin(futures_util::stream::iter(lines)))
}

/// An image the manifest names, made available to the whole cluster: this node's Docker
/// copy, else the archive of a release that carried it, else (as `--image-pull` allows) the
/// registry's; then saved into the store and left with the app's keepers like a built image.
pub async fn named_image(
    agent: &AgentHandles,
    image: &str,
    keepers: &[String],
    events: &UnboundedSender<BuildEvent>,
) -> Result<ImageRef, String> {
    let docker = agent.builds.docker()?.clone();
    let mut have = image_layers::has_image(&docker, image).await;
    if !have && let Some(known) = cluster_copy(agent, image).await {
        let _ = events.send(BuildEvent::Step {
            text: format!("image {image}: loading the cluster's copy"),
        });
        match crate::workload::supervisor::ensure_image(agent, &known).await {
            Ok(()) => have = true,
            Err(err) => warn!(image, error = %err, "the cluster's copy did not load"),
        }
    }
    match image_pull::source(agent.builds.pull(), have) {
        ImageSource::Local => {}
        ImageSource::Missing => {
            return Err(format!(
                "image {image} is neither on this node nor in the cluster, and this node does not pull (--image-pull never): \
                 `docker load` it on a node, build it from a Dockerfile (build = \"dockerfile\"), or allow pulls with --image-pull if-missing"
            ));
        }
        ImageSource::Pull => pull(&docker, image, events).await?,
    }
    let _ = events.send(BuildEvent::Step {
        text: format!("image {image}: storing it for the cluster"),
    });
    let stored = image_layers::export(&docker, image, agent.bundles.local())
        .await
        .map_err(|err| err.to_string())?;
    let image = ImageRef {
        id: stored.id,
        tag: image.to_string(),
        config: stored.config,
        layers: stored.layers,
        builder: proto::build::Builder::Image,
    };
    let blobs: Vec<_> = image.blobs().cloned().collect();
    image_transfer::spread(agent, &blobs, keepers).await?;
    Ok(image)
}

/// A release in the catalog whose image is `image`, by tag.
async fn cluster_copy(agent: &AgentHandles, image: &str) -> Option<ImageRef> {
    agent
        .catalog
        .records()
        .await
        .into_iter()
        .filter_map(|record| record.release)
        .filter_map(|release| release.image)
        .find(|known| known.tag == image)
}

/// `docker pull`, its progress passed on as lines (a layer's status when it changes).
async fn pull(
    docker: &bollard::Docker,
    image: &str,
    events: &UnboundedSender<BuildEvent>,
) -> Result<(), String> {
    let _ = events.send(BuildEvent::Step {
        text: format!("pulling {image}"),
    });
    let (name, tag) = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    };
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
        .from_image(name)
        .tag(tag)
        .build();
    let mut progress = docker.create_image(Some(options), None, None);
    let mut last = String::new();
    while let Some(info) = progress.next().await {
        let info = info.map_err(|err| {
            format!("cannot pull {image}: {err}. Check the name, or that the registry is reachable from this node")
        })?;
        let bytes = info
            .progress_detail
            .and_then(|detail| detail.current.zip(detail.total))
            .map(|(current, total)| {
                format!(
                    " {}/{}",
                    proto::manifest::human_bytes(current.max(0) as u64),
                    proto::manifest::human_bytes(total.max(0) as u64)
                )
            });
        let (line, status) = match (info.id, info.status) {
            (Some(id), Some(status)) => (
                format!("{id}: {status}{}", bytes.unwrap_or_default()),
                format!("{id}: {status}"),
            ),
            (None, Some(status)) => (status.clone(), status),
            _ => continue,
        };
        // The byte counts change a hundred times a layer: pass on a change of status.
        if status != last {
            last = status;
            let _ = events.send(BuildEvent::Line { text: line });
        }
    }
    Ok(())
}
