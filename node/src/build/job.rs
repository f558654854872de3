//! One build, on the node it was placed on: reserve the build's CPU and memory, get the
//! bundle (verified), turn it into a recipe, build the image, file the image's archive in
//! the store and leave copies with the app's keepers, run the release command, keep the
//! whole output as a blob, and report a [`BuildSummary`]. Every step reports to `events`;
//! every failure ends in a summary with the error, never in silence.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use proto::api::BuildRequest;
use proto::build::{BuildEvent, BuildSummary, Builder, CacheUse, ImageRef};
use proto::catalog::BlobRef;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::docker_build::{self, BuildSpec};
use super::image_archive;
use super::recipe::{self, Asked, Recipe};
use super::release_phase::{self, ReleaseRun};
use super::{Folder, SourceTree};
use crate::bundle::UnpackLimits;
use crate::control::hlc::unix_ms;
use crate::control::scheduler::Needs;
use crate::handles::AgentHandles;
use crate::workload::admission_control::Refusal;

/// The tag of a release's image: what `docker images` shows, and what the archive carries.
pub fn image_tag(app: &str, release: u64) -> String {
    format!("stratus-app/{app}:r{release}")
}

/// What the build reports as it goes, kept whole for the log blob.
struct Reporter {
    events: UnboundedSender<BuildEvent>,
    log: Vec<String>,
    started: Instant,
}

impl Reporter {
    fn step(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.log.push(format!("-----> {text}"));
        let _ = self.events.send(BuildEvent::Step { text });
    }

    fn line(&mut self, text: &str) {
        self.log.push(text.to_string());
        let event = if text.starts_with("Step ") {
            BuildEvent::Step { text: text.into() }
        } else {
            BuildEvent::Line { text: text.into() }
        };
        let _ = self.events.send(event);
    }
}

/// Runs the build and returns its summary; the summary's `error` says if it failed.
pub async fn run(
    agent: &AgentHandles,
    request: &BuildRequest,
    reservation: Reservation,
    events: UnboundedSender<BuildEvent>,
) -> BuildSummary {
    let mut reporter = Reporter {
        events,
        log: Vec::new(),
        started: Instant::now(),
    };
    let started_at_ms = unix_ms();
    let mut summary = BuildSummary {
        release: request.release,
        builder: request.builder,
        reason: request.reason.clone(),
        node: agent.node_id().to_string(),
        started_at_ms,
        duration_ms: 0,
        cache: CacheUse::None,
        cache_key: None,
        error: None,
        log: None,
        image: None,
    };
    let outcome = build(agent, request, reservation, &mut reporter, &mut summary).await;
    if let Err(error) = &outcome {
        reporter.step(format!("build failed: {error}"));
        summary.error = Some(error.clone());
    }
    summary.duration_ms = reporter.started.elapsed().as_millis() as u64;
    if let Ok(docker) = agent.builds.docker() {
        let running = running_releases(agent).await;
        super::image_gc::collect(docker, &running, agent.builds.keep_releases()).await;
    }
    summary.log = keep_log(agent, request, &reporter.log).await;
    info!(app = %request.app, release = request.release, ok = summary.error.is_none(),
        ms = summary.duration_ms, cache = %summary.cache, "build finished");
    summary
}

/// Room reserved for one build on this node, and the mark that it is building here.
pub struct Reservation {
    id: String,
    _running: super::builds::Running,
}

/// Reserves the build's CPU and memory here; refused when this node cannot build it now
/// (no Docker, draining, full, or the release already building here), so the node that
/// placed it can ask the next.
pub async fn reserve(agent: &AgentHandles, request: &BuildRequest) -> Result<Reservation, String> {
    agent.builds.docker()?;
    let Some(running) = agent.builds.begin(&request.app, request.release).await else {
        return Err(format!(
            "release {} of {} is already being built on {}",
            request.release,
            request.app,
            agent.node_id()
        ));
    };
    let id = format!("build-{}-{}", request.app, request.release);
    let resources = request.manifest.build.resources;
    let needs = Needs {
        cpu_millis: resources.cpu_millis,
        mem_bytes: resources.memory_bytes,
    };
    match agent.admission.admit(&id, needs).await {
        Ok(_) => Ok(Reservation {
            id,
            _running: running,
        }),
        Err(Refusal::Draining) => Err(format!("{} is draining", agent.node_id())),
        Err(Refusal::NoRoom(why)) => Err(format!("no room to build on {}: {why}", agent.node_id())),
    }
}

async fn build(
    agent: &AgentHandles,
    request: &BuildRequest,
    reservation: Reservation,
    reporter: &mut Reporter,
    summary: &mut BuildSummary,
) -> Result<(), String> {
    let docker = agent.builds.docker()?.clone();
    let result = build_reserved(agent, &docker, request, reporter, summary).await;
    agent.admission.release(&reservation.id).await;
    result
}

async fn build_reserved(
    agent: &AgentHandles,
    docker: &bollard::Docker,
    request: &BuildRequest,
    reporter: &mut Reporter,
    summary: &mut BuildSummary,
) -> Result<(), String> {
    reporter.step(format!(
        "building {} release {} on {} with the {} builder ({})",
        request.app,
        request.release,
        agent.node_id(),
        request.builder,
        request.reason
    ));
    let source = unpack(agent, request).await?;
    let tree = Folder(source.path());
    let manifest = &request.manifest;
    let procfile_web = None::<&str>;
    let asked = Asked {
        runtime: manifest.runtime.as_deref(),
        cmd: manifest.cmd.as_deref().or(procfile_web),
    };
    let recipe = recipe::recipe(request.builder, &tree, &asked, agent.builds.bases())
        .map_err(|err| err.to_string())?;
    if let Some(runtime) = &recipe.runtime {
        reporter.step(format!(
            "runtime {runtime} from {}",
            recipe.base_images.join(", ")
        ));
    }
    if let Some(start) = &recipe.start {
        reporter.step(format!("start command: {start}"));
    }
    let cache_key = dependency_key(docker, &recipe, &tree).await;
    summary.cache_key = cache_key.clone();
    let tag = image_tag(&request.app, request.release);
    let spec = BuildSpec {
        tag: tag.clone(),
        args: manifest
            .build
            .args
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect::<HashMap<_, _>>(),
        target: manifest.build.target.clone(),
        memory_bytes: manifest.build.resources.memory_bytes,
        timeout: agent.builds.timeout(),
        // No labels: each would be one more step (a container and a commit, seconds on
        // each deploy) after the code; the tag names the app and release.
        labels: HashMap::new(),
    };
    let (lines, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
    let building = docker_build::build(docker, source.path(), &recipe, &spec, move |line| {
        let _ = lines.send(line.to_string());
    });
    tokio::pin!(building);
    let built = loop {
        tokio::select! {
            line = received.recv() => {
                if let Some(line) = line { reporter.line(&line) }
            }
            done = &mut building => break done,
        }
    };
    while let Ok(line) = received.try_recv() {
        reporter.line(&line);
    }
    let built = built.map_err(|err| err.to_string())?;
    summary.cache = dependency_cache(&recipe, &built.log);
    if summary.cache != CacheUse::None {
        reporter.step(format!(
            "dependencies: {}",
            match summary.cache {
                CacheUse::Hit => "reused (cached layer, nothing installed)",
                _ => "installed",
            }
        ));
    }
    if let Some(command) = &manifest.release {
        reporter.step(format!("release command: {command}"));
        let mut env: Vec<String> = manifest
            .env
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        env.push(format!("PORT={}", manifest.port));
        env.push(format!("STRATUS_APP={}", request.app));
        env.push(format!("STRATUS_RELEASE={}", request.release));
        let run = ReleaseRun {
            app: &request.app,
            release: request.release,
            image: &built.image_id,
            command,
            env,
            memory_bytes: manifest.resources.memory_bytes.max(256 << 20),
            timeout: agent.builds.timeout(),
        };
        let (lines, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
        let running = release_phase::run(docker, &run, move |line| {
            let _ = lines.send(line.to_string());
        });
        tokio::pin!(running);
        let ran = loop {
            tokio::select! {
                line = received.recv() => {
                    if let Some(line) = line { reporter.line(&line) }
                }
                done = &mut running => break done,
            }
        };
        while let Ok(line) = received.try_recv() {
            reporter.line(&line);
        }
        ran.map_err(|err| err.to_string())?;
    }
    reporter.step("exporting the image to the cluster's store");
    let exported = Instant::now();
    let archive = image_archive::save(docker, &tag, agent.bundles.local())
        .await
        .map_err(|err| err.to_string())?;
    reporter.step(format!(
        "image {} ({}) exported in {:.1} s",
        short(&built.image_id),
        proto::manifest::human_bytes(archive.size),
        exported.elapsed().as_secs_f64()
    ));
    let sent = Instant::now();
    let held = spread(agent, &archive, &request.keepers).await?;
    reporter.step(format!(
        "image held by {} in {:.1} s",
        held.join(", "),
        sent.elapsed().as_secs_f64()
    ));
    summary.image = Some(ImageRef {
        id: built.image_id,
        tag,
        archive,
        builder: request.builder,
    });
    Ok(())
}

/// The bundle, unpacked under a temporary folder that goes with the value.
struct Unpacked {
    _folder: tempfile::TempDir,
    app: std::path::PathBuf,
}

impl Unpacked {
    fn path(&self) -> &std::path::Path {
        &self.app
    }
}

async fn unpack(agent: &AgentHandles, request: &BuildRequest) -> Result<Unpacked, String> {
    let sha256 = &request.bundle.sha256;
    if !agent.bundles.local().has(sha256) {
        let holders = live_api_addrs(agent).await;
        crate::workload::supervisor::fetch_bundle(agent, sha256, &holders, "build").await?;
    }
    let work = agent.builds.work_dir().to_path_buf();
    tokio::fs::create_dir_all(&work)
        .await
        .map_err(|err| format!("cannot create {}: {err}", work.display()))?;
    let folder = tempfile::Builder::new()
        .prefix(&format!("{}-{}-", request.app, request.release))
        .tempdir_in(&work)
        .map_err(|err| format!("cannot create a build folder in {}: {err}", work.display()))?;
    let app = folder.path().join("app");
    let blobs = agent.bundles.local().clone();
    let (digest, target) = (sha256.clone(), app.clone());
    tokio::task::spawn_blocking(move || {
        blobs.unpack_release(&digest, &target, UnpackLimits::default())
    })
    .await
    .map_err(|err| err.to_string())?
    .map_err(|err| err.to_string())?;
    Ok(Unpacked {
        _folder: folder,
        app,
    })
}

/// The release each app runs now, from the catalog.
pub(crate) async fn running_releases(
    agent: &AgentHandles,
) -> std::collections::BTreeMap<String, u64> {
    agent
        .catalog
        .records()
        .await
        .into_iter()
        .filter_map(|record| Some((record.name.clone(), record.release?.number)))
        .collect()
}

pub(crate) async fn live_api_addrs(agent: &AgentHandles) -> Vec<SocketAddr> {
    agent
        .view()
        .await
        .live_nodes()
        .filter(|node| node.node_id != agent.node_id())
        .filter_map(|node| node.identity.as_ref().map(|identity| identity.api_addr))
        .collect()
}

/// Leaves the archive with the app's keepers (or in S3), so a node that must run the
/// release and lacks the image can fetch it even if this node is gone.
pub(crate) async fn spread(
    agent: &AgentHandles,
    blob: &BlobRef,
    keepers: &[String],
) -> Result<Vec<String>, String> {
    let path = agent
        .bundles
        .local()
        .path(&blob.sha256)
        .map_err(|err| err.to_string())?;
    if let Some(s3) = agent.bundles.s3() {
        s3.put_file(&path, &blob.sha256)
            .await
            .map_err(|err| format!("cannot store the image in {}: {err}", s3.config().url()))?;
        return Ok(vec![s3.config().url()]);
    }
    let view = agent.view().await;
    let mut held = vec![agent.node_id().to_string()];
    let sends = keepers
        .iter()
        .filter(|keeper| keeper.as_str() != agent.node_id())
        .filter_map(|keeper| {
            let addr = view.node(keeper)?.identity.as_ref()?.api_addr;
            Some((keeper.clone(), agent.peers.client(addr)?))
        })
        .map(|(keeper, client)| {
            let path = path.clone();
            async move {
                let sent = client.put_blob(&blob.sha256, &path).await;
                (keeper, sent)
            }
        });
    for (keeper, sent) in futures_util::future::join_all(sends).await {
        match sent {
            Ok(()) => held.push(keeper),
            Err(err) => warn!(node = %keeper, error = %err, "could not send the image archive"),
        }
    }
    Ok(held)
}

/// The whole output as a blob, held where the archive is; `None` if it cannot be stored.
async fn keep_log(agent: &AgentHandles, request: &BuildRequest, log: &[String]) -> Option<BlobRef> {
    let text: String = log.iter().map(|line| format!("{line}\n")).collect();
    let blobs = agent.bundles.local().clone();
    let stored = tokio::task::spawn_blocking(move || -> Result<BlobRef, String> {
        let tmp = blobs.temp_file().map_err(|err| err.to_string())?;
        std::fs::write(tmp.path(), text.as_bytes()).map_err(|err| err.to_string())?;
        let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
        blobs
            .put_verified(tmp.path(), &sha256)
            .map_err(|err| err.to_string())?;
        Ok(BlobRef {
            sha256,
            size: text.len() as u64,
        })
    })
    .await
    .ok()?;
    match stored {
        Ok(blob) => {
            if let Err(err) = spread(agent, &blob, &request.keepers).await {
                warn!(error = %err, "could not send the build log");
            }
            Some(blob)
        }
        Err(err) => {
            warn!(error = %err, "could not keep the build log");
            None
        }
    }
}

/// The dependency layer's key: the builder, the base images' ids and the dependency
/// files' content. `None` for builders without one.
async fn dependency_key(
    docker: &bollard::Docker,
    recipe: &Recipe,
    tree: &impl SourceTree,
) -> Option<String> {
    if recipe.dependency_files.is_empty() && recipe.generated.is_empty() {
        return None;
    }
    let mut hasher = Sha256::new();
    hasher.update(recipe.builder.name());
    for base in &recipe.base_images {
        let id = docker
            .inspect_image(base)
            .await
            .ok()
            .and_then(|image| image.id)
            .unwrap_or_else(|| base.clone());
        hasher.update([0]);
        hasher.update(id);
    }
    for file in &recipe.dependency_files {
        hasher.update([0]);
        hasher.update(file);
        hasher.update([0]);
        hasher.update(tree.read(file).unwrap_or_default());
    }
    for (path, text) in &recipe.generated {
        hasher.update([0]);
        hasher.update(path);
        hasher.update([0]);
        hasher.update(text);
    }
    Some(hex::encode(hasher.finalize()))
}

/// Whether the classic builder reused the install step's layer: its `Step` line is then
/// followed by ` ---> Using cache`.
pub(crate) fn dependency_cache(recipe: &Recipe, log: &[String]) -> CacheUse {
    if !matches!(recipe.builder, Builder::Python | Builder::Node) {
        return CacheUse::None;
    }
    let install = log.iter().position(|line| {
        line.starts_with("Step ")
            && line.contains("RUN ")
            && (line.contains("pip install")
                || line.contains("npm ci")
                || line.contains("npm install"))
    });
    match install.and_then(|at| log.get(at + 1)) {
        Some(next) if next.contains("Using cache") => CacheUse::Hit,
        _ => CacheUse::Miss,
    }
}

fn short(image_id: &str) -> &str {
    let id = image_id.strip_prefix("sha256:").unwrap_or(image_id);
    &id[..id.len().min(12)]
}

/// How long a build may be silent before the node that placed it gives up on it.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(60);
