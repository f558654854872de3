//! `testbed bench build`: deploys from source on 3 real agents (the `stratus` binary), each
//! with a Docker daemon of its own ([`SandboxDockerd`], passed as `--docker-host`), so that
//! an image one node built or loaded is really absent from the others.
//!
//! In one run it measures:
//! 1. cold builds of `examples/flask`, from the first byte of the upload to every replica
//!    healthy. Cold: the daemons were started empty for this run and hold only the base
//!    images copied from the host (`stratus/python:3.11`, `stratus/busybox:latest`); every
//!    round deploys a new app name whose requirements.txt differs by a comment (a
//!    dependency key no node or store has), and before a later round the previous app is
//!    destroyed, every other image (dependency images too), dangling layer and build cache
//!    removed from every daemon (the bench checks that only the base images are left) and
//!    every node's download cache deleted, so pip downloads and installs everything from
//!    PyPI again. The build record's dependency cache must say `miss`;
//! 2. code-only redeploys (app.py changed) of the last cold app, until every replica of the
//!    new release is healthy; the build record must say `hit`;
//! 3. the spread of a ~100 MB image (a Dockerfile `FROM stratus/busybox` whose `RUN` writes
//!    `--spread-mib` MiB from /dev/urandom) to the 2 nodes that did not build it: a new app
//!    every round (its first release places its 3 replicas on the 3 nodes at once), timed
//!    from the release being recorded to both lacking nodes' replicas running, against
//!    `docker save | docker load` of the same image from the building node's daemon into a
//!    spare sandboxed daemon prepared like the lacking nodes (it has `stratus/busybox`),
//!    right after each round; also two such copies at once (into two spare daemons).
//!
//! Replica states come from each node's own view (its own replicas), not gossip: the times
//! are when it happened, not when another node heard. Timestamps of build steps are taken
//! here as the streamed build events arrive. Where the time goes comes from the build log
//! (`image ... exported in X s`, `image held by ... in Y s`) and the agents' logs (`image
//! loaded from the cluster ms=...`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use node::sandbox_dockerd::SandboxDockerd;
use proto::build::{BuildEvent, CacheUse};
use proto::{ContainerHealth, ContainerState};
use tokio::time::Instant;

use crate::bench::median;
use crate::harness::{LocalCluster, repo_root};

/// The images every node's daemon starts with.
const BASE_IMAGES: [&str; 2] = ["stratus/busybox:latest", "stratus/python:3.11"];
/// Builds download wheels from PyPI: a bound, never the figure.
const BUILD_WAIT: Duration = Duration::from_secs(300);
const HEALTHY_WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(25);

pub struct BuildBench {
    /// Agents run on 127.0.NET.x.
    pub net: u8,
    pub cold_rounds: usize,
    pub redeploy_rounds: usize,
    pub spread_rounds: usize,
    /// Size of the spread image's random layer.
    pub spread_mib: u64,
}

/// One deploy from source, timed from the first byte of the upload.
#[derive(Debug, Clone)]
pub struct DeployRound {
    pub app: String,
    pub release: u64,
    pub build_node: String,
    pub cache: CacheUse,
    /// Placed event (upload, inspection and storage of the bundle are before it).
    pub placed: Duration,
    /// Build steps (`Step N/M : ...`, the builder's own steps): when each began and how
    /// long it lasted, as seen by this client.
    pub steps: Vec<BuildStep>,
    pub build_ms: u64,
    /// From the build log: `image ... (SIZE) exported in X s`.
    pub exported: Option<(String, f64)>,
    /// From the build log: `image held by ... in Y s`.
    pub held_s: Option<f64>,
    /// When the release was recorded (its `created_at_ms`).
    pub recorded: Duration,
    pub accepted: Duration,
    pub replicas: Vec<ReplicaTimes>,
    /// Every replica of the release healthy.
    pub healthy: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildStep {
    pub text: String,
    pub at: Duration,
    pub took: Duration,
}

/// When one replica of a release was first seen in each state, on its own node.
#[derive(Debug, Clone)]
pub struct ReplicaTimes {
    pub node: String,
    pub starting: Option<Duration>,
    pub running: Option<Duration>,
    pub healthy: Option<Duration>,
    /// From the node's log, if it loaded the image: `image loaded from the cluster ms=`.
    pub load_ms: Option<u64>,
}

/// One spread round and its baseline.
#[derive(Debug, Clone)]
pub struct SpreadRound {
    pub deploy: DeployRound,
    /// Release recorded -> every node that lacked the image runs its replica.
    pub spread: Duration,
    /// From the start of the image export on the building node instead (the archive is
    /// saved, hashed and copied to the keepers before the release is recorded).
    pub spread_with_export: Duration,
    /// `docker save IMAGE | docker -H <fresh sandbox> load` of the same image.
    pub baseline: Duration,
    /// Two of those at once, into two fresh sandboxes (the machine's 2 cores shared as the
    /// two lacking nodes share them).
    pub baseline_two: Duration,
    pub archive_bytes: u64,
}

pub struct BuildReport {
    pub storage_driver: String,
    /// /proc/loadavg's 1, 5 and 15 minute figures at the start and at the end (2 cores,
    /// shared with whatever else runs).
    pub load_before: String,
    pub load_after: String,
    pub cold: Vec<DeployRound>,
    pub redeploys: Vec<DeployRound>,
    pub spreads: Vec<SpreadRound>,
}

/// The sandboxed daemons and the cluster using them; the agents go before their daemons.
struct Stage {
    cluster: Option<LocalCluster>,
    daemons: Vec<SandboxDockerd>,
    /// Two daemons prepared like the nodes that lack the spread image.
    baselines: Vec<SandboxDockerd>,
    work: tempfile::TempDir,
}

impl Drop for Stage {
    fn drop(&mut self) {
        drop(self.cluster.take());
        // The sandboxes remove their containers and stop on drop.
        self.daemons.clear();
        self.baselines.clear();
    }
}

impl Stage {
    fn cluster(&self) -> &LocalCluster {
        self.cluster
            .as_ref()
            .expect("the cluster lives as long as the stage")
    }
}

pub async fn build(bench: &BuildBench) -> anyhow::Result<BuildReport> {
    anyhow::ensure!(bench.cold_rounds >= 1, "need at least one cold round");
    crate::harness::ensure_image()?;
    let load_before = loadavg();
    let stage = start_stage(bench.net).await?;
    let storage_driver = stage.daemons[0].storage_driver().to_string();
    println!(
        "3 agents on 127.0.{}.2-4, each with its own dockerd ({storage_driver}); logs in {}",
        bench.net,
        stage.cluster().data_root().display()
    );

    let mut cold = Vec::new();
    let mut app = String::new();
    for round in 1..=bench.cold_rounds {
        if !app.is_empty() {
            destroy_and_make_cold(&stage, &app).await?;
        }
        assert_cold(&stage)?;
        app = format!("flask-cold-{round}");
        let dir = flask_copy(&stage, &app, round, 0)?;
        let timed = deploy_and_wait(&stage, &app, &dir).await?;
        print_round(&format!("cold build {round}"), &timed);
        anyhow::ensure!(
            timed.cache == CacheUse::Miss,
            "cold round {round}: the dependency layer was {}, not missed",
            timed.cache
        );
        cold.push(timed);
    }

    let mut redeploys = Vec::new();
    let cold_round = bench.cold_rounds;
    for round in 1..=bench.redeploy_rounds {
        let dir = flask_copy(&stage, &app, cold_round, round)?;
        let timed = deploy_and_wait(&stage, &app, &dir).await?;
        print_round(&format!("code-only redeploy {round}"), &timed);
        anyhow::ensure!(
            timed.cache == CacheUse::Hit,
            "redeploy {round}: the dependency layer was {}, not reused",
            timed.cache
        );
        redeploys.push(timed);
    }

    // The Flask replicas would only be noise from here on.
    destroy(&stage, &app).await?;
    let mut spreads = Vec::new();
    for round in 1..=bench.spread_rounds {
        let spread = spread_round(&stage, round, bench.spread_mib).await?;
        println!(
            "spread {round}: {} image built on {}: recorded -> lacking nodes running {:.2} s \
             (from export start {:.2} s) | docker save | docker load {:.2} s",
            human(spread.archive_bytes),
            spread.deploy.build_node,
            spread.spread.as_secs_f64(),
            spread.spread_with_export.as_secs_f64(),
            spread.baseline.as_secs_f64()
        );
        println!(
            "    two save | load at once {:.2} s",
            spread.baseline_two.as_secs_f64(),
        );
        print_round(&format!("spread {round}"), &spread.deploy);
        spreads.push(spread);
    }
    drop(stage);
    Ok(BuildReport {
        storage_driver,
        load_before,
        load_after: loadavg(),
        cold,
        redeploys,
        spreads,
    })
}

async fn start_stage(net: u8) -> anyhow::Result<Stage> {
    let started = Instant::now();
    // Nodes get the base images; the baselines busybox only, as the spread image needs.
    let wanted: [(&str, &[&str]); 5] = [
        ("bench-build-1", &BASE_IMAGES),
        ("bench-build-2", &BASE_IMAGES),
        ("bench-build-3", &BASE_IMAGES),
        ("bench-build-baseline-1", &BASE_IMAGES[..1]),
        ("bench-build-baseline-2", &BASE_IMAGES[..1]),
    ];
    let mut daemons = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let starts: Vec<_> = wanted
                .into_iter()
                .map(|(name, images)| {
                    scope.spawn(move || -> Result<SandboxDockerd, String> {
                        let daemon = SandboxDockerd::start(name)?;
                        for image in images {
                            daemon.copy_image_from_system(image)?;
                        }
                        Ok(daemon)
                    })
                })
                .collect();
            let mut daemons = Vec::new();
            let mut errors = Vec::new();
            for start in starts {
                match start.join() {
                    Ok(Ok(daemon)) => daemons.push(daemon),
                    Ok(Err(err)) => errors.push(err),
                    Err(_) => errors.push("a sandbox start panicked".into()),
                }
            }
            if errors.is_empty() {
                Ok(daemons)
            } else {
                Err(errors.join("; "))
            }
        })
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let baselines = daemons.split_off(3);
    println!(
        "5 sandboxed dockerds started and given {} in {:.0} s",
        BASE_IMAGES.join(", "),
        started.elapsed().as_secs_f64()
    );
    let mut cluster = LocalCluster::start_with(net, 0, vec!["--runtime".into(), "docker".into()])?;
    for daemon in &daemons {
        cluster.add_agent(None, vec!["--docker-host".into(), daemon.host()])?;
    }
    let stage = Stage {
        cluster: Some(cluster),
        daemons,
        baselines,
        work: tempfile::tempdir()?,
    };
    let cluster = stage.cluster();
    cluster
        .wait_for(
            "3 agents that can build",
            Duration::from_secs(60),
            || async {
                cluster.converged().await
                    && match cluster.agents[0].client().nodes().await {
                        Ok(view) => {
                            view.nodes
                                .iter()
                                .filter(|node| node.identity.as_ref().is_some_and(|id| id.builds))
                                .count()
                                == 3
                        }
                        Err(_) => false,
                    }
            },
        )
        .await?;
    Ok(stage)
}

/// examples/flask as app `app`; `change` > 0 edits app.py (a code-only change).
fn flask_copy(stage: &Stage, app: &str, round: usize, change: usize) -> anyhow::Result<PathBuf> {
    let dir = stage.work.path().join(format!("{app}-{round}-{change}"));
    std::fs::create_dir_all(&dir)?;
    let from = repo_root().join("examples/flask");
    for entry in std::fs::read_dir(&from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    edit(
        &dir.join("stratus.toml"),
        "name = \"flask\"",
        &format!("name = \"{app}\""),
    )?;
    // A dependency key of its own each cold round, so no node (or the cluster's store) has
    // its dependency image; the same packages, so pip downloads the same wheels.
    let requirements = dir.join("requirements.txt");
    let mut text = std::fs::read_to_string(&requirements)?;
    text.push_str(&format!("# bench cold round {round}\n"));
    std::fs::write(&requirements, text)?;
    if change > 0 {
        edit(
            &dir.join("app.py"),
            "hello from flask",
            &format!("hello from flask (change {change})"),
        )?;
    }
    Ok(dir)
}

fn edit(path: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    anyhow::ensure!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replace(from, to))?;
    Ok(())
}

/// The spread app: `mib` MiB of random bytes in a layer of their own over busybox, new
/// every round (the `COPY round.txt` before it changes), served by hello's start.sh.
fn spread_app(stage: &Stage, app: &str, round: usize, mib: u64) -> anyhow::Result<PathBuf> {
    let dir = stage.work.path().join(app);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        repo_root().join("examples/hello/start.sh"),
        dir.join("start.sh"),
    )?;
    std::fs::write(dir.join("round.txt"), format!("{round}\n"))?;
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM stratus/busybox:latest\n\
             COPY round.txt /round.txt\n\
             RUN dd if=/dev/urandom of=/payload.bin bs=1M count={mib}\n\
             COPY start.sh /start.sh\n\
             CMD [\"sh\", \"/start.sh\"]\n"
        ),
    )?;
    std::fs::write(
        dir.join("stratus.toml"),
        format!(
            "name = \"{app}\"\nreplicas = 3\n\n[resources]\ncpu = 0.1\nmemory = \"32MiB\"\n\n\
             [env]\nGREETING = \"spread\"\n\n[health]\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
        ),
    )?;
    Ok(dir)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".into())
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Deploys `dir` as `app` through node-1's streamed API and waits until every replica of
/// the new release is healthy on its own node.
async fn deploy_and_wait(stage: &Stage, app: &str, dir: &Path) -> anyhow::Result<DeployRound> {
    let cluster = stage.cluster();
    let zip = tempfile::NamedTempFile::new()?;
    node::bundle::pack_dir(dir, std::fs::File::create(zip.path())?)?;
    let client = cluster.agents[0].client();
    let mut events: Vec<(Duration, BuildEvent)> = Vec::new();
    let wall = SystemTime::now();
    let start = Instant::now();
    let deployed = tokio::time::timeout(
        BUILD_WAIT,
        client.deploy_following(
            app,
            zip.path(),
            |_| {},
            |event| events.push((start.elapsed(), event)),
        ),
    )
    .await
    .with_context(|| format!("{app}: no answer to the deploy within {BUILD_WAIT:?}"))?;
    let accepted_at = start.elapsed();
    let accepted = match deployed {
        Ok(accepted) => accepted,
        Err(err) => bail!(
            "{app}: deploy failed: {err}\n{}\n{}",
            build_text(&events),
            cluster.logs_tail(20)
        ),
    };
    let release = accepted.release;
    let summary = accepted
        .build
        .clone()
        .with_context(|| format!("{app}: the deploy was not built"))?;
    let view = client.app(app).await?;
    let desired = view.replicas_desired as usize;
    let recorded = view
        .release
        .as_ref()
        .filter(|r| r.number == release)
        .map(|r| Duration::from_millis(r.created_at_ms.saturating_sub(unix_ms(wall))))
        .unwrap_or(accepted_at);
    let (mut replicas, healthy) = watch_release(cluster, app, release, desired, start).await?;
    let tag = format!("stratus-app/{app}:r{release}");
    let loads = loaded_ms(cluster, &tag);
    for replica in &mut replicas {
        replica.load_ms = loads.get(&replica.node).copied();
    }
    let text = build_text(&events);
    Ok(DeployRound {
        app: app.to_string(),
        release,
        build_node: summary.node.clone(),
        cache: summary.cache,
        placed: events
            .iter()
            .find(|(_, e)| matches!(e, BuildEvent::Placed { .. }))
            .map(|(at, _)| *at)
            .unwrap_or_default(),
        steps: steps(&events, accepted_at),
        build_ms: summary.duration_ms,
        exported: exported(&text),
        held_s: seconds_after(&text, "image held by ", " in "),
        recorded,
        accepted: accepted_at,
        replicas,
        healthy,
    })
}

/// Until `desired` replicas of `release` are healthy, each as its own node reports it.
async fn watch_release(
    cluster: &LocalCluster,
    app: &str,
    release: u64,
    desired: usize,
    start: Instant,
) -> anyhow::Result<(Vec<ReplicaTimes>, Duration)> {
    let clients: Vec<(String, api::Client)> = cluster
        .agents
        .iter()
        .map(|agent| (agent.node_id.clone(), agent.client()))
        .collect();
    // By container id: a replica restarted after a failure is a new container.
    let mut seen: BTreeMap<(String, u32), ReplicaTimes> = BTreeMap::new();
    let waited = Instant::now();
    loop {
        let mut healthy = 0;
        for (node_id, client) in &clients {
            let Ok(view) = client.app(app).await else {
                continue;
            };
            let at = start.elapsed();
            for replica in view
                .replicas
                .iter()
                .filter(|r| r.release == release && &r.node_id == node_id)
            {
                let times = seen
                    .entry((replica.node_id.clone(), replica.replica))
                    .or_insert_with(|| ReplicaTimes {
                        node: replica.node_id.clone(),
                        starting: None,
                        running: None,
                        healthy: None,
                        load_ms: None,
                    });
                times.starting.get_or_insert(at);
                if replica.state == ContainerState::Running {
                    times.running.get_or_insert(at);
                }
                if replica.state == ContainerState::Running
                    && replica.health == ContainerHealth::Healthy
                {
                    times.running.get_or_insert(at);
                    times.healthy.get_or_insert(at);
                    healthy += 1;
                }
            }
        }
        if healthy >= desired {
            return Ok((seen.into_values().collect(), start.elapsed()));
        }
        if waited.elapsed() > HEALTHY_WAIT {
            let view = clients[0].1.app(app).await.ok();
            bail!(
                "{app} release {release}: {healthy} of {desired} replicas healthy after {HEALTHY_WAIT:?}: {view:?}\n{}",
                cluster.logs_tail(20)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Each build step with how long it lasted: until the next step, the last until `end`.
fn steps(events: &[(Duration, BuildEvent)], end: Duration) -> Vec<BuildStep> {
    let starts: Vec<(Duration, &str)> = events
        .iter()
        .filter_map(|(at, event)| match event {
            BuildEvent::Step { text } => Some((*at, text.as_str())),
            _ => None,
        })
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, (at, text))| {
            let next = starts.get(i + 1).map_or(end, |(next, _)| *next);
            BuildStep {
                text: text.to_string(),
                at: *at,
                took: next.saturating_sub(*at),
            }
        })
        .collect()
}

fn build_text(events: &[(Duration, BuildEvent)]) -> String {
    events
        .iter()
        .filter_map(|(_, event)| match event {
            BuildEvent::Step { text } | BuildEvent::Line { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `image ID (SIZE) exported in X s` -> (SIZE, X).
fn exported(text: &str) -> Option<(String, f64)> {
    let line = text
        .lines()
        .find(|line| line.starts_with("image ") && line.contains(" exported in "))?;
    let size = line.split_once('(')?.1.split_once(')')?.0.to_string();
    Some((size, seconds_after(line, "image ", " exported in ")?))
}

/// The `X` of the first line starting with `prefix` that has `marker X s`.
fn seconds_after(text: &str, prefix: &str, marker: &str) -> Option<f64> {
    let line = text.lines().find(|line| line.starts_with(prefix))?;
    let (_, after) = line.rsplit_once(marker)?;
    after.trim_end_matches(" s").trim().parse().ok()
}

/// Node id -> `ms` of its agent's `image loaded from the cluster` line for `tag`.
fn loaded_ms(cluster: &LocalCluster, tag: &str) -> BTreeMap<String, u64> {
    let needle = format!("image={tag} ");
    let mut loads = BTreeMap::new();
    for (index, agent) in cluster.agents.iter().enumerate() {
        let text = std::fs::read_to_string(cluster.log_path(index)).unwrap_or_default();
        for line in text.lines() {
            if !line.contains("image loaded from the cluster") {
                continue;
            }
            let line = format!("{line} ");
            if !line.contains(&needle) {
                continue;
            }
            if let Some(ms) = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("ms="))
                .and_then(|ms| ms.parse().ok())
            {
                loads.insert(agent.node_id.clone(), ms);
            }
        }
    }
    loads
}

/// Destroys `app`, waits until its containers are gone, then removes from every node's
/// daemon everything but the base images: built images, dangling layers, build cache.
async fn destroy_and_make_cold(stage: &Stage, app: &str) -> anyhow::Result<()> {
    destroy(stage, app).await?;
    for daemon in &stage.daemons {
        let listed = daemon.docker(&["images", "-a", "--format", "{{.Repository}}:{{.Tag}}"]);
        let names = String::from_utf8_lossy(&listed.stdout).to_string();
        let built: Vec<&str> = names
            .lines()
            .filter(|name| name.starts_with("stratus-app/") || name.starts_with("stratus-deps/"))
            .collect();
        if !built.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(built);
            check(daemon, &args)?;
        }
        check(daemon, &["image", "prune", "-f"])?;
        check(daemon, &["builder", "prune", "-af"])?;
    }
    // And every node's pip download cache: a cold build downloads from PyPI.
    for agent in &stage.cluster().agents {
        let cache = stage
            .cluster()
            .data_root()
            .join(&agent.node_id)
            .join("builds/download-cache");
        match std::fs::remove_dir_all(&cache) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => bail!("cannot clear {}: {err}", cache.display()),
        }
    }
    Ok(())
}

/// Destroys `app` and waits until no daemon has a container of it.
async fn destroy(stage: &Stage, app: &str) -> anyhow::Result<()> {
    let cluster = stage.cluster();
    cluster.agents[0].client().destroy(app).await?;
    let label = format!("label=stratus.app={app}");
    cluster
        .wait_for(
            &format!("{app}'s containers to be gone"),
            Duration::from_secs(60),
            || async {
                stage.daemons.iter().all(|daemon| {
                    let out = daemon.docker(&["ps", "-aq", "--filter", &label]);
                    out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace)
                })
            },
        )
        .await?;
    Ok(())
}

fn check(daemon: &SandboxDockerd, args: &[&str]) -> anyhow::Result<()> {
    let out = daemon.docker(args);
    anyhow::ensure!(
        out.status.success(),
        "docker -H {} {}: {}",
        daemon.host(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Every node's daemon holds the base images and nothing else (no intermediate layers).
fn assert_cold(stage: &Stage) -> anyhow::Result<()> {
    for daemon in &stage.daemons {
        let listed = daemon.docker(&["images", "-a", "--format", "{{.Repository}}:{{.Tag}}"]);
        let names = String::from_utf8_lossy(&listed.stdout).to_string();
        let mut names: Vec<&str> = names.lines().collect();
        names.sort_unstable();
        let mut expected = BASE_IMAGES.to_vec();
        expected.sort_unstable();
        anyhow::ensure!(
            names == expected,
            "{} is not cold: it has {names:?}",
            daemon.name()
        );
    }
    Ok(())
}

async fn spread_round(stage: &Stage, round: usize, mib: u64) -> anyhow::Result<SpreadRound> {
    // A new app every round: its first release places all 3 replicas at once (a later
    // release starts its new replicas at once too, but the old ones would be noise).
    let app = format!("spread-{round}");
    let dir = spread_app(stage, &app, round, mib)?;
    let deploy = deploy_and_wait(stage, &app, &dir).await?;
    let export_started = deploy
        .steps
        .iter()
        .find(|step| step.text.starts_with("exporting the image"))
        .map(|step| step.at)
        .context("the build log has no export step")?;
    // Per node that lacked the image: when its first replica of the release ran.
    let mut lacking: BTreeMap<&str, Duration> = BTreeMap::new();
    for replica in &deploy.replicas {
        if replica.node == deploy.build_node {
            continue;
        }
        if let Some(running) = replica.running {
            let first = lacking.entry(replica.node.as_str()).or_insert(running);
            *first = (*first).min(running);
        }
    }
    anyhow::ensure!(
        lacking.len() == 2,
        "spread {round}: expected replicas running on 2 nodes besides {}: {:?}",
        deploy.build_node,
        deploy.replicas
    );
    let last_running = lacking.values().max().copied().unwrap_or(deploy.healthy);
    let spread_with_export = last_running.saturating_sub(export_started);

    // The baseline: the same image, from the building node's daemon into a daemon that
    // has busybox as the lacking nodes do, with nothing else running.
    let index = stage
        .cluster()
        .agents
        .iter()
        .position(|agent| agent.node_id == deploy.build_node)
        .context("the building node is not one of the agents")?;
    let source = &stage.daemons[index];
    let tag = format!("stratus-app/{app}:r{}", deploy.release);
    let archive_bytes = image_bytes(source, &tag)?;
    let baseline = save_load(source, &stage.baselines[..1], &tag).await?;
    let baseline_two = save_load(source, &stage.baselines, &tag).await?;
    destroy(stage, &app).await?;
    Ok(SpreadRound {
        spread: last_running.saturating_sub(deploy.recorded),
        spread_with_export,
        baseline,
        baseline_two,
        archive_bytes,
        deploy,
    })
}

/// `docker save TAG | docker load` from `source` into each of `targets` at once; the time
/// until the last is done. The copies are removed afterwards.
async fn save_load(
    source: &SandboxDockerd,
    targets: &[SandboxDockerd],
    tag: &str,
) -> anyhow::Result<Duration> {
    let pipelines: Vec<String> = targets
        .iter()
        .map(|target| {
            format!(
                "docker -H {} save {tag} | docker -H {} load -q",
                source.host(),
                target.host()
            )
        })
        .collect();
    let started = Instant::now();
    let runs: Vec<_> = pipelines
        .iter()
        .map(|pipeline| {
            tokio::spawn(
                tokio::process::Command::new("bash")
                    .args(["-o", "pipefail", "-c", pipeline])
                    .output(),
            )
        })
        .collect();
    let mut outputs = Vec::new();
    for run in runs {
        outputs.push(run.await??);
    }
    let took = started.elapsed();
    for ((pipeline, out), target) in pipelines.iter().zip(outputs).zip(targets) {
        anyhow::ensure!(
            out.status.success(),
            "{pipeline}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        anyhow::ensure!(target.has_image(tag), "{pipeline} loaded nothing");
        check(target, &["rmi", tag])?;
    }
    Ok(took)
}

fn image_bytes(daemon: &SandboxDockerd, tag: &str) -> anyhow::Result<u64> {
    let out = daemon.docker(&["image", "inspect", "--format", "{{.Size}}", tag]);
    anyhow::ensure!(out.status.success(), "no image {tag} on {}", daemon.name());
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn human(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

fn secs(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn print_round(what: &str, round: &DeployRound) {
    println!(
        "{what}: {} r{} built on {} (dependencies: {}) in {:.1} s; placed {} | recorded {} | \
         accepted {} | all healthy {}",
        round.app,
        round.release,
        round.build_node,
        round.cache,
        round.build_ms as f64 / 1000.0,
        secs(round.placed),
        secs(round.recorded),
        secs(round.accepted),
        secs(round.healthy)
    );
    let mut slow: Vec<&BuildStep> = round.steps.iter().collect();
    slow.sort_by_key(|step| std::cmp::Reverse(step.took));
    for step in slow.into_iter().take(4) {
        let text: String = step.text.chars().take(90).collect();
        println!(
            "    {:>7} from {:>7}  {text}",
            secs(step.took),
            secs(step.at)
        );
    }
    if let Some((size, seconds)) = &round.exported {
        println!(
            "    export {size} in {seconds:.1} s, held by the keepers in {:.1} s",
            round.held_s.unwrap_or(f64::NAN)
        );
    }
    for replica in &round.replicas {
        let at = |time: Option<Duration>| time.map_or("-".to_string(), secs);
        println!(
            "    {} replica: starting {} running {} healthy {}{}",
            replica.node,
            at(replica.starting),
            at(replica.running),
            at(replica.healthy),
            replica
                .load_ms
                .map(|ms| format!(" (image loaded in {ms} ms)"))
                .unwrap_or_default()
        );
    }
}

/// Medians of where a kind of deploy spends its time, in order.
fn print_breakdown(name: &str, rounds: &[DeployRound]) {
    if rounds.is_empty() {
        return;
    }
    let med = |mut values: Vec<Duration>| median(&mut values);
    let step_at = |round: &DeployRound, prefix: &str| {
        round
            .steps
            .iter()
            .find(|step| step.text.starts_with(prefix))
            .map(|step| step.at)
    };
    let export_at: Vec<Duration> = rounds
        .iter()
        .map(|r| step_at(r, "exporting the image").unwrap_or(r.accepted))
        .collect();
    let install: Vec<Duration> = rounds
        .iter()
        .map(|r| {
            r.steps
                .iter()
                .filter(|step| step.text.contains("pip install"))
                .map(|step| step.took)
                .sum()
        })
        .collect();
    let seconds = |value: Option<f64>| Duration::from_secs_f64(value.unwrap_or(0.0).max(0.0));
    let export: Vec<Duration> = rounds
        .iter()
        .map(|r| seconds(r.exported.as_ref().map(|(_, s)| *s)))
        .collect();
    let held: Vec<Duration> = rounds.iter().map(|r| seconds(r.held_s)).collect();
    let after: Vec<Duration> = rounds.iter().map(|r| r.healthy - r.accepted).collect();
    let load: Vec<Duration> = rounds
        .iter()
        .map(|r| {
            Duration::from_millis(
                r.replicas
                    .iter()
                    .filter_map(|x| x.load_ms)
                    .max()
                    .unwrap_or(0),
            )
        })
        .collect();
    println!(
        "  {name} (medians of {}): upload -> placed {} | placed -> export starts (docker build{}) {} | \
         export {} | copy to the keepers {} | accepted {} | accepted -> all healthy {} \
         (slowest image load there {})",
        rounds.len(),
        secs(med(rounds.iter().map(|r| r.placed).collect())),
        if install.iter().any(|d| !d.is_zero()) {
            format!(", pip install step {}", secs(med(install.clone())))
        } else {
            String::new()
        },
        secs(med(rounds
            .iter()
            .zip(&export_at)
            .map(|(r, at)| at.saturating_sub(r.placed))
            .collect())),
        secs(med(export)),
        secs(med(held)),
        secs(med(rounds.iter().map(|r| r.accepted).collect())),
        secs(med(after)),
        secs(med(load)),
    );
}

/// The table of medians and goals.
pub fn print_report(report: &BuildReport) {
    let med = |values: Vec<Duration>| {
        let mut values = values;
        median(&mut values)
    };
    let max = |values: &[Duration]| values.iter().max().copied().unwrap_or_default();
    println!(
        "\nbench build: 3 agents, each with its own sandboxed dockerd ({}); load average {} at the start, {} at the end",
        report.storage_driver, report.load_before, report.load_after
    );
    println!(
        "{:<58} {:>9} {:>9} {:>7} {:>9}",
        "", "median", "max", "rounds", "goal"
    );
    let row = |name: &str, values: Vec<Duration>, goal: &str| {
        if values.is_empty() {
            return;
        }
        println!(
            "{:<58} {:>9} {:>9} {:>7} {:>9}",
            name,
            secs(med(values.clone())),
            secs(max(&values)),
            values.len(),
            goal
        );
    };
    row(
        "cold Flask build: first byte -> every replica healthy",
        report.cold.iter().map(|r| r.healthy).collect(),
        "<= 30 s",
    );
    row(
        "  of which first byte -> deploy accepted (build, export)",
        report.cold.iter().map(|r| r.accepted).collect(),
        "",
    );
    row(
        "code-only redeploy: first byte -> every replica healthy",
        report.redeploys.iter().map(|r| r.healthy).collect(),
        "<= 3 s",
    );
    row(
        "  of which first byte -> deploy accepted (build, export)",
        report.redeploys.iter().map(|r| r.accepted).collect(),
        "",
    );
    if !report.spreads.is_empty() {
        let spread: Vec<Duration> = report.spreads.iter().map(|s| s.spread).collect();
        let with_export: Vec<Duration> = report
            .spreads
            .iter()
            .map(|s| s.spread_with_export)
            .collect();
        let baseline: Vec<Duration> = report.spreads.iter().map(|s| s.baseline).collect();
        let size = human(report.spreads[0].archive_bytes);
        row(
            &format!("spread of a {size} image to 2 nodes: recorded -> running"),
            spread.clone(),
            "",
        );
        row(
            "  same, from the start of its export on the building node",
            with_export.clone(),
            "",
        );
        row(
            "docker save | docker load of it, one node",
            baseline.clone(),
            "",
        );
        row(
            "  two of those at once (2 fresh daemons, the same 2 cores)",
            report.spreads.iter().map(|s| s.baseline_two).collect(),
            "",
        );
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        let ratios = |values: &[Duration]| -> Vec<f64> {
            let mut r: Vec<f64> = values
                .iter()
                .zip(&baseline)
                .map(|(a, b)| ratio(*a, *b))
                .collect();
            r.sort_by(f64::total_cmp);
            r
        };
        let spread_ratios = ratios(&spread);
        let export_ratios = ratios(&with_export);
        println!(
            "{:<58} {:>8.2}x {:>8.2}x {:>7} {:>9}",
            "spread / save+load (recorded -> running)",
            spread_ratios[spread_ratios.len() / 2],
            spread_ratios.last().copied().unwrap_or_default(),
            spread_ratios.len(),
            "<= 1.5x"
        );
        println!(
            "{:<58} {:>8.2}x {:>8.2}x {:>7} {:>9}",
            "spread / save+load (from export start)",
            export_ratios[export_ratios.len() / 2],
            export_ratios.last().copied().unwrap_or_default(),
            export_ratios.len(),
            ""
        );
    }
    println!("where the time goes:");
    print_breakdown("cold build", &report.cold);
    print_breakdown("code-only redeploy", &report.redeploys);
    let spread_deploys: Vec<DeployRound> =
        report.spreads.iter().map(|s| s.deploy.clone()).collect();
    print_breakdown("spread app", &spread_deploys);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_the_build_log() {
        let text = "Step 3/7 : RUN pip install\n\
                    exporting the image to the cluster's store\n\
                    image 1234abcd5678 (173.2 MiB) exported in 2.4 s\n\
                    image held by node-1, node-2, node-3 in 1.9 s\n";
        assert_eq!(exported(text), Some(("173.2 MiB".to_string(), 2.4)));
        assert_eq!(seconds_after(text, "image held by ", " in "), Some(1.9));
    }

    #[test]
    fn steps_last_until_the_next_one() {
        let at = Duration::from_millis;
        let events = vec![
            (at(10), BuildEvent::Step { text: "a".into() }),
            (at(20), BuildEvent::Line { text: "x".into() }),
            (at(50), BuildEvent::Step { text: "b".into() }),
        ];
        let step = |text: &str, from, took| BuildStep {
            text: text.into(),
            at: at(from),
            took: at(took),
        };
        assert_eq!(
            steps(&events, at(80)),
            vec![step("a", 10, 40), step("b", 50, 30)]
        );
    }
}
