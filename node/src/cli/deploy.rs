//! `stratus deploy`: pack the app folder, upload it with a progress bar, show the build as
//! it happens (when the app has a builder), then follow the rollout until every replica is
//! healthy or the deploy fails.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use proto::api::AppView;
use proto::build::BuildEvent;
use proto::events::{Change, EventLine};
use proto::{ContainerHealth, ContainerState};
use tokio::time::Instant;

use crate::bundle::pack_dir;

pub async fn deploy(client: &api::Client, dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let zip = tempfile::Builder::new()
        .prefix("stratus-bundle-")
        .suffix(".zip")
        .tempfile()
        .context("cannot create a temporary file for the bundle")?;
    let (dir_owned, zip_path) = (dir.to_path_buf(), zip.path().to_path_buf());
    let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = std::fs::File::create(&zip_path)?;
        Ok(pack_dir(&dir_owned, file)?)
    })
    .await??;
    let app = summary.manifest.name.clone();
    let size = std::fs::metadata(zip.path())?.len();
    println!(
        "Packed {} files ({}) of app {app} from {}",
        summary.files,
        human_bytes(size),
        dir.display()
    );
    for skipped in &summary.skipped_symlinks {
        println!("  skipped symbolic link {}", skipped.display());
    }

    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("Uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = bar.clone();
    let mut shown = BuildOutput::new(bar.clone());
    let accepted = client
        .deploy_following(
            &app,
            zip.path(),
            move |sent| progress.set_position(sent),
            |event| shown.show(event),
        )
        .await;
    shown.finish();
    bar.finish_and_clear();
    let accepted = accepted?;
    if let Some(build) = &accepted.build {
        println!(
            "Built release {} with the {} builder on {} in {:.1} s (dependencies: cache {})",
            accepted.release,
            build.builder,
            build.node,
            build.duration_ms as f64 / 1000.0,
            build.cache
        );
    }
    println!(
        "Release {} of {app} accepted (sha256 {}), held by {}",
        accepted.release,
        &accepted.sha256[..12.min(accepted.sha256.len())],
        accepted.holders.join(", ")
    );
    follow(client, &app, accepted.release, timeout).await
}

/// A build's output as the deploy streams it: each step on a line of its own, ended with
/// its duration, its output indented under it, and a spinner while a step is silent.
struct BuildOutput {
    spinner: ProgressBar,
    upload: Option<ProgressBar>,
    step: Option<(String, Instant)>,
}

impl BuildOutput {
    fn new(upload: ProgressBar) -> BuildOutput {
        let spinner = ProgressBar::hidden();
        BuildOutput {
            spinner,
            upload: Some(upload),
            step: None,
        }
    }

    fn show(&mut self, event: BuildEvent) {
        if let Some(upload) = self.upload.take() {
            // The first event means the upload is done.
            upload.finish_and_clear();
            self.spinner = ProgressBar::new_spinner();
            self.spinner.enable_steady_tick(Duration::from_millis(120));
        }
        match event {
            BuildEvent::Placed { node, reason } => {
                self.close_step();
                self.say(format!("-----> Building on {node} ({reason})"));
            }
            BuildEvent::Step { text } => {
                self.close_step();
                self.say(format!("-----> {text}"));
                self.spinner.set_message(text.clone());
                self.step = Some((text, Instant::now()));
            }
            BuildEvent::Line { text } => self.say(format!("       {text}")),
            BuildEvent::Alive { .. } | BuildEvent::Finished { .. } => {}
        }
    }

    /// A line above the spinner; printed plainly when there is no terminal to draw on (the
    /// spinner is hidden then, and would swallow it).
    fn say(&self, line: String) {
        if self.spinner.is_hidden() {
            println!("{line}");
        } else {
            self.spinner.println(line);
        }
    }

    /// A step that took a while gets its duration when the next begins.
    fn close_step(&mut self) {
        if let Some((_, started)) = self.step.take() {
            let took = started.elapsed();
            if took >= Duration::from_millis(500) {
                self.say(format!("       ({:.1} s)", took.as_secs_f64()));
            }
        }
    }

    fn finish(&mut self) {
        self.close_step();
        self.spinner.finish_and_clear();
    }
}

/// Polls the app until release `release` has every replica healthy, or fails.
/// Follows the rollout of `release` through the node's event stream: each event about the
/// app is shown and the app read again, so nothing is polled and nothing is missed (the
/// stream starts at the index the first read names).
pub async fn follow(
    client: &api::Client,
    app: &str,
    release: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    let deadline = Instant::now() + timeout;
    let (mut view, index) = client.app_after(app, None, Duration::ZERO).await?;
    let query = api::EventQuery {
        since: Some(index),
        app: Some(app.to_string()),
        ..api::EventQuery::default()
    };
    let mut events = client.events(&query).await?;
    let mut last_status = String::new();
    loop {
        let status = rollout_status(&view, release);
        if status.line != last_status {
            spinner.set_message(status.line.clone());
            last_status = status.line.clone();
        }
        if let Some(failure) = status.failure {
            spinner.finish_and_clear();
            bail!("deploy of {app} release {release} failed: {failure}");
        }
        if status.done {
            spinner.finish_and_clear();
            println!("Release {release} of {app} is live: {}", status.line);
            for replica in view.replicas.iter().filter(|r| r.release == release) {
                println!(
                    "  replica {} on {} at http://{}",
                    replica.replica, replica.node_id, replica.addr
                );
            }
            return Ok(());
        }
        let next = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(next) => next,
            Err(_) => {
                spinner.finish_and_clear();
                bail!(
                    "release {release} of {app} is not healthy after {}s ({}): see `stratus status {app}`",
                    timeout.as_secs(),
                    status.line
                );
            }
        };
        match next {
            Some(Ok(EventLine::Event(event))) => {
                if concerns(&event.change, release) {
                    let line = format!("       {}", crate::cli::events::event_line(&event));
                    // A hidden spinner (output not a terminal) prints nothing of its own.
                    if spinner.is_hidden() {
                        println!("{line}");
                    } else {
                        spinner.println(line);
                    }
                }
                view = client.app(app).await?;
            }
            // What no event reports is still seen within a heartbeat (15 s).
            Some(Ok(EventLine::Heartbeat { .. })) => view = client.app(app).await?,
            Some(Ok(EventLine::Gone { .. })) | None => {
                // The stream ended (the node restarts, or the reader fell behind): the
                // state, then the stream again from where the node now is.
                let (fresh, index) = client.app_after(app, None, Duration::ZERO).await?;
                view = fresh;
                events = client
                    .events(&api::EventQuery {
                        since: Some(index),
                        ..query.clone()
                    })
                    .await?;
            }
            Some(Err(err)) => {
                spinner.finish_and_clear();
                return Err(err).context(format!(
                    "lost the event stream of {app}: `stratus status {app}` on another node shows how the rollout goes on"
                ));
            }
        }
    }
}

/// Whether an event is worth a line while `release` rolls out.
fn concerns(change: &Change, release: u64) -> bool {
    if let Some(replica) = change.replica() {
        return replica.release == release;
    }
    match change {
        Change::RolloutProgress { release: r, .. }
        | Change::ReleaseLive { release: r, .. }
        | Change::ReleaseFailed { release: r, .. }
        | Change::RolloutBlocked { release: r, .. } => *r == release,
        Change::RolledBack { from, .. } => *from == release,
        _ => false,
    }
}

struct RolloutStatus {
    line: String,
    done: bool,
    failure: Option<String>,
}

fn rollout_status(view: &AppView, release: u64) -> RolloutStatus {
    if let Some(reason) = view.failed_releases.get(&release) {
        let back_to = view.release.as_ref().map_or("no release".to_string(), |r| {
            format!("release {}", r.number)
        });
        return RolloutStatus {
            line: format!("rolled back to {back_to}"),
            done: false,
            failure: Some(format!(
                "{reason}. The rollout stopped and {} went back to {back_to}, which kept serving; \
                 `stratus logs {} --previous` shows the failed replicas' output",
                view.name, view.name
            )),
        };
    }
    if let Some(current) = view.release.as_ref().map(|r| r.number)
        && current > release
    {
        return RolloutStatus {
            line: format!("release {current} replaced it"),
            done: false,
            failure: Some(format!(
                "a newer release ({current}) was deployed meanwhile"
            )),
        };
    }
    let mine: Vec<_> = view
        .replicas
        .iter()
        .filter(|r| r.release == release)
        .collect();
    let healthy = mine
        .iter()
        .filter(|r| r.state == ContainerState::Running && r.health == ContainerHealth::Healthy)
        .count() as u32;
    let exited: Vec<String> = mine
        .iter()
        .filter(|r| r.state == ContainerState::Exited)
        .map(|r| {
            format!(
                "replica {} on {}: {}",
                r.replica,
                r.node_id,
                r.detail.as_deref().unwrap_or("exited")
            )
        })
        .collect();
    let old_serving = view
        .replicas
        .iter()
        .filter(|r| r.release != release && r.state == ContainerState::Running)
        .count();
    let stopping = mine
        .iter()
        .filter(|r| r.state == ContainerState::Stopping)
        .count();
    let starting = mine.len() - healthy as usize - exited.len() - stopping;
    let mut line = format!(
        "{healthy}/{} replicas healthy, {starting} starting",
        view.replicas_desired
    );
    if old_serving > 0 {
        line.push_str(&format!(
            ", {old_serving} of the previous release still serving"
        ));
    }
    // With an earlier release to go back to, the app's reconciler decides whether a crash
    // fails the rollout (and rolls back); on a first release a crash is the verdict.
    let first_release = view.releases.len() <= 1;
    let failure = view
        .failure
        .clone()
        .or_else(|| (first_release && !exited.is_empty()).then(|| exited.join("; ")));
    let done = if view.replicas_desired == 0 {
        mine.is_empty()
    } else {
        healthy >= view.replicas_desired
    };
    RolloutStatus {
        done,
        line,
        failure,
    }
}

pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
