//! One build, on the node it was placed on: reserve the build's CPU and memory, get the
//! bundle (verified), turn it into a recipe, make the image (python, node, static: the
//! dependency image, found or built once per dependency key, plus the code as one layer;
//! dockerfile: `docker build`), file its blobs in the store and leave copies with the app's
//! keepers, run the release command, keep the whole output as a blob, and report a
//! [`BuildSummary`]. Every step reports to `events`;
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

use super::dependency_install::{self, InstallRun};
use super::docker_build::{self, BuildSpec};
use super::recipe::{self, Asked, Recipe};
use super::release_phase::{self, ReleaseRun};
use super::{Folder, SourceTree};
use super::{image_layers, image_transfer};
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

    /// Runs `work`, passing on each line it sends to `received` as it comes, and the
    /// lines still queued when it ends.
    async fn relay<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
        mut received: tokio::sync::mpsc::UnboundedReceiver<String>,
    ) -> T {
        tokio::pin!(work);
        let done = loop {
            tokio::select! {
                line = received.recv() => {
                    if let Some(line) = line { self.line(&line) }
                }
                done = &mut work => break done,
            }
        };
        while let Ok(line) = received.try_recv() {
            self.line(&line);
        }
        done
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
        dependencies: None,
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
        let mut wanted = wanted_dependencies(agent, agent.builds.keep_releases()).await;
        // This build is not in the catalog yet.
        wanted.extend(summary.dependencies.as_ref().map(|deps| deps.tag.clone()));
        super::image_gc::collect_dependencies(docker, &wanted, agent.builds.cache_bytes()).await;
        let (caches, cap) = (agent.builds.cache_dir(), agent.builds.cache_bytes());
        let _ = tokio::task::spawn_blocking(move || {
            super::dependency_install::trim_caches(&caches, cap)
        })
        .await;
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
        Err(refusal @ Refusal::NoGvisor) => Err(format!("{} refuses: {refusal}", agent.node_id())),
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
    // The manifest's `cmd` already holds the Procfile's `web:` line when there is one.
    let asked = Asked {
        runtime: manifest.runtime.as_deref(),
        cmd: manifest.cmd.as_deref(),
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
        cpu_millis: manifest.build.resources.cpu_millis,
        memory_bytes: manifest.build.resources.memory_bytes,
        timeout: agent.builds.timeout(),
        labels: HashMap::new(),
    };
    let blobs = agent.bundles.local();
    let (image, dependencies) = match (&recipe.code_at, &cache_key) {
        (Some(code_at), Some(key)) => {
            let deps_spec = BuildSpec {
                tag: dependency_tag(recipe.builder, key),
                ..spec
            };
            let (deps, cache) =
                dependency_image(agent, docker, &source, &recipe, &deps_spec, key, reporter)
                    .await?;
            summary.cache = cache;
            reporter.step(format!("adding the code at {code_at}"));
            let started = Instant::now();
            let store = blobs.clone();
            let parent = image_transfer::blobs_of(&deps);
            let (dir, at) = (
                source.path().to_path_buf(),
                code_at.trim_start_matches('/').to_string(),
            );
            let composed = tokio::task::spawn_blocking(move || {
                image_layers::compose(
                    &store,
                    &parent,
                    &dir,
                    &at,
                    "COPY . /app # stratus: the app's code",
                )
            })
            .await
            .map_err(|err| err.to_string())?
            .map_err(|err| err.to_string())?;
            image_layers::load(docker, blobs, &composed, &tag)
                .await
                .map_err(|err| err.to_string())?;
            let code = composed.layers.last().map(|layer| layer.size).unwrap_or(0);
            reporter.step(format!(
                "image {} made in {:.1} s: the code is a {} layer on {}",
                short(&composed.id),
                started.elapsed().as_secs_f64(),
                proto::manifest::human_bytes(code),
                deps.tag
            ));
            (composed, Some(deps))
        }
        _ => {
            let built = run_docker_build(docker, &source, &recipe, &spec, reporter).await?;
            summary.cache = dependency_cache(&recipe, &built.log);
            reporter.step("exporting the image to the cluster's store");
            let exported = Instant::now();
            let image = image_layers::export(docker, &tag, blobs)
                .await
                .map_err(|err| err.to_string())?;
            reporter.step(format!(
                "image {} ({} in {} layers) exported in {:.1} s",
                short(&built.image_id),
                proto::manifest::human_bytes(
                    image.layers.iter().map(|layer| layer.size).sum::<u64>()
                ),
                image.layers.len(),
                exported.elapsed().as_secs_f64()
            ));
            (image, None)
        }
    };
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
            image: &image.id,
            command,
            env,
            cpu_millis: manifest.resources.cpu_millis,
            memory_bytes: manifest.resources.memory_bytes.max(256 << 20),
            timeout: agent.builds.timeout(),
        };
        let (lines, received) = tokio::sync::mpsc::unbounded_channel::<String>();
        let running = release_phase::run(docker, &run, move |line| {
            let _ = lines.send(line.to_string());
        });
        let ran = reporter.relay(running, received).await;
        ran.map_err(|err| err.to_string())?;
    }
    let image = ImageRef {
        id: image.id,
        tag,
        config: image.config,
        layers: image.layers,
        builder: request.builder,
    };
    let sent = Instant::now();
    let mut keep: Vec<BlobRef> = image.blobs().cloned().collect();
    if let Some(deps) = &dependencies {
        keep.push(deps.config.clone());
    }
    let held = image_transfer::spread(agent, &keep, &request.keepers).await?;
    reporter.step(format!(
        "image held by {} in {:.1} s",
        held.join(", "),
        sent.elapsed().as_secs_f64()
    ));
    summary.image = Some(image);
    summary.dependencies = dependencies;
    Ok(())
}

/// `docker build` of the recipe, its output passed on line by line as it comes.
async fn run_docker_build(
    docker: &bollard::Docker,
    source: &Unpacked,
    recipe: &Recipe,
    spec: &BuildSpec,
    reporter: &mut Reporter,
) -> Result<docker_build::Built, String> {
    let (lines, received) = tokio::sync::mpsc::unbounded_channel::<String>();
    let building = docker_build::build(docker, source.path(), recipe, spec, move |line| {
        let _ = lines.send(line.to_string());
    });
    let built = reporter.relay(building, received).await;
    built.map_err(|err| err.to_string())
}

/// The recipe's dependency install, its output passed on line by line as it comes.
async fn run_install(
    agent: &AgentHandles,
    docker: &bollard::Docker,
    source: &Unpacked,
    recipe: &Recipe,
    install: &super::recipe::Install,
    spec: &BuildSpec,
    reporter: &mut Reporter,
) -> Result<(), String> {
    reporter.step(format!("installing the dependencies: {}", install.command));
    let cache_root = agent.builds.cache_dir();
    let run = InstallRun {
        tag: &spec.tag,
        source: source.path(),
        cache_root: &cache_root,
        work_dir: agent.builds.work_dir(),
        cpu_millis: spec.cpu_millis,
        memory_bytes: spec.memory_bytes,
        timeout: spec.timeout,
    };
    let (lines, received) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut output = move |line: &str| {
        let _ = lines.send(line.to_string());
    };
    let installing = dependency_install::install(docker, recipe, install, &run, &mut output);
    reporter.relay(installing, received).await
}

/// The tag of a dependency image: the builder and the dependency key, shared by every app
/// with the same base and dependency files.
pub fn dependency_tag(builder: Builder, key: &str) -> String {
    format!("stratus-deps/{builder}:{}", &key[..key.len().min(32)])
}

/// The dependency image with key `key`: this node's, else one another node built and
/// stored (loaded, nothing installed), else built here from the recipe. Filed in the
/// store either way; returned with whether the dependencies were reused.
async fn dependency_image(
    agent: &AgentHandles,
    docker: &bollard::Docker,
    source: &Unpacked,
    recipe: &Recipe,
    spec: &BuildSpec,
    key: &str,
    reporter: &mut Reporter,
) -> Result<(ImageRef, CacheUse), String> {
    let installs = matches!(recipe.builder, Builder::Python | Builder::Node);
    let reused = if installs {
        CacheUse::Hit
    } else {
        CacheUse::None
    };
    let mut cache = reused;
    if !image_layers::has_image(docker, &spec.tag).await {
        let known = stored_dependencies(agent, key).await;
        let mut loaded = false;
        if let Some((node, known)) = known {
            reporter.step(format!(
                "dependencies: loading {} (built on {node})",
                known.tag
            ));
            match image_transfer::ensure(agent, &known).await {
                Ok(()) => loaded = true,
                Err(err) => reporter.step(format!("could not load it ({err}): building")),
            }
        }
        if !loaded {
            reporter.step(format!("building the dependency image {}", spec.tag));
            cache = match &recipe.install {
                Some(install) => {
                    run_install(agent, docker, source, recipe, install, spec, reporter).await?;
                    CacheUse::Miss
                }
                None => {
                    let built = run_docker_build(docker, source, recipe, spec, reporter).await?;
                    if installs {
                        dependency_cache(recipe, &built.log)
                    } else {
                        CacheUse::None
                    }
                }
            };
        }
    }
    let started = Instant::now();
    let blobs = image_layers::export(docker, &spec.tag, agent.bundles.local())
        .await
        .map_err(|err| err.to_string())?;
    if started.elapsed() > Duration::from_millis(500) {
        reporter.step(format!(
            "dependency image stored in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok((
        ImageRef {
            id: blobs.id,
            tag: spec.tag.clone(),
            config: blobs.config,
            layers: blobs.layers,
            builder: recipe.builder,
        },
        cache,
    ))
}

/// A dependency image with key `key` that a build of any app stored, and the node that
/// built it.
async fn stored_dependencies(agent: &AgentHandles, key: &str) -> Option<(String, ImageRef)> {
    agent
        .catalog
        .records()
        .await
        .into_iter()
        .flat_map(|record| record.builds.into_values())
        .filter(|build| build.error.is_none() && build.cache_key.as_deref() == Some(key))
        .filter_map(|build| Some((build.node, build.dependencies?)))
        .next_back()
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

/// The dependency images the last `keep` successful builds of each app were made on.
async fn wanted_dependencies(
    agent: &AgentHandles,
    keep: usize,
) -> std::collections::BTreeSet<String> {
    agent
        .catalog
        .records()
        .await
        .into_iter()
        .flat_map(|record| {
            record
                .builds
                .into_values()
                .rev()
                .filter(|build| build.error.is_none())
                .filter_map(|build| build.dependencies.map(|deps| deps.tag))
                .take(keep)
        })
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

/// The whole output as a blob, held where the image is; `None` if it cannot be stored.
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
            if let Err(err) =
                image_transfer::spread(agent, std::slice::from_ref(&blob), &request.keepers).await
            {
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

/// The dependency image's key: the builder, how the image is made (Dockerfile or install,
/// and the start command), the base images' ids and the
/// dependency files' content. `None` for builders that do not add the code themselves.
async fn dependency_key(
    docker: &bollard::Docker,
    recipe: &Recipe,
    tree: &impl SourceTree,
) -> Option<String> {
    recipe.code_at.as_ref()?;
    let mut hasher = Sha256::new();
    hasher.update(recipe.builder.name());
    // How the dependency image is made, with its settings and start command.
    hasher.update([0]);
    hasher.update(recipe.dockerfile.as_deref().unwrap_or_default());
    hasher.update([0]);
    hasher.update(format!("{:?}", recipe.install));
    hasher.update([0]);
    hasher.update(recipe.start.as_deref().unwrap_or_default());
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
