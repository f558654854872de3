//! Runs a [`Recipe`] through the Docker daemon's build API: the bundle's folder, the
//! recipe's generated files and its Dockerfile go into a tar context, which is streamed
//! to the daemon; every output line is handed to the caller as it arrives (the deploy
//! shows it live), and the image is tagged. The classic builder is used: BuildKit needs a
//! session the daemon API alone does not give, and the classic builder's layer cache is
//! what keeps a code-only change from reinstalling dependencies.
//!
//! Limits: the build's CPU (a CFS quota) and memory are always set. The classic build API
//! takes nothing more: its `RUN` steps get Docker's default capabilities, no pids limit and
//! no `no-new-privileges` (SECURITY.md says so); the one-off containers of the python and
//! node builders and of the release phase are hardened like replicas.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion};
use futures_util::StreamExt;
use tokio_util::io::ReaderStream;

use super::recipe::{GENERATED_DIR, Recipe};

/// Kept of a failed build's output for its error: the end says why.
const ERROR_TAIL_LINES: usize = 20;

/// How to build, beyond the recipe.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The image's tag, `stratus-app/web:7`.
    pub tag: String,
    /// `[build] args`.
    pub args: HashMap<String, String>,
    /// `[build] target`, a stage of a multi-stage Dockerfile.
    pub target: Option<String>,
    /// The build containers' CPU limit, thousandths of a core; 0: the default limit.
    pub cpu_millis: u64,
    /// The build container's memory limit; 0: the default limit.
    pub memory_bytes: u64,
    /// The whole build's limit; the daemon stops the build when the request is dropped.
    pub timeout: Duration,
    pub labels: HashMap<String, String>,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    pub image_id: String,
    /// Every line of output, in order.
    pub log: Vec<String>,
    /// Each step (`Step 3/7 : RUN ...`) with how long it took.
    pub steps: Vec<(String, Duration)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot prepare the build context: {0}")]
    Context(#[source] std::io::Error),
    #[error(
        "the base image {image} is not on this node: build it (scripts/build-base-images.sh), \
         `docker load` it, or name one the cluster has"
    )]
    MissingBase { image: String },
    #[error("the Docker daemon did not take the build: {0}")]
    Docker(#[source] bollard::errors::Error),
    #[error("the build failed: {reason}\n{}", .log_tail.join("\n"))]
    Failed {
        reason: String,
        log_tail: Vec<String>,
    },
    #[error("the build took longer than {limit:?} and was stopped\n{}", .log_tail.join("\n"))]
    TimedOut {
        limit: Duration,
        log_tail: Vec<String>,
    },
}

/// Builds `recipe` over the folder `source` (an unpacked bundle), calling `progress` with
/// each line of output.
pub async fn build(
    docker: &Docker,
    source: &Path,
    recipe: &Recipe,
    spec: &BuildSpec,
    mut progress: impl FnMut(&str) + Send,
) -> Result<Built, BuildError> {
    // A missing base fails in a second with the image's name, not after a pull attempt
    // the daemon cannot make (there is no registry to pull from).
    for image in &recipe.base_images {
        if !is_stage_arg(image) && docker.inspect_image(image).await.is_err() {
            return Err(BuildError::MissingBase {
                image: image.clone(),
            });
        }
    }
    let context = write_context(source.to_path_buf(), recipe.clone())
        .await
        .map_err(BuildError::Context)?;
    let file = tokio::fs::File::open(context.path())
        .await
        .map_err(BuildError::Context)?;
    let dockerfile = match recipe.dockerfile {
        Some(_) => format!("{GENERATED_DIR}/Dockerfile"),
        None => "Dockerfile".to_string(),
    };
    let (memory, cpu_period, cpu_quota) = build_limits(spec);
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&dockerfile)
        .t(&spec.tag)
        .rm(true)
        .forcerm(true)
        .memory(memory)
        .memswap(memory)
        .cpuperiod(cpu_period)
        .cpuquota(cpu_quota)
        .buildargs(&spec.args)
        .labels(&spec.labels)
        .version(BuilderVersion::BuilderV1);
    if let Some(target) = &spec.target {
        options = options.target(target);
    }
    let body = bollard::body_try_stream(ReaderStream::with_capacity(file, api::client::FILE_CHUNK));
    let mut stream = docker.build_image(options.build(), None, Some(body));

    let mut log: Vec<String> = Vec::new();
    let mut steps: Vec<(String, Duration)> = Vec::new();
    let mut step_started = Instant::now();
    let mut image_id = None;
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = &mut deadline => {
                return Err(BuildError::TimedOut { limit: spec.timeout, log_tail: tail(&log) });
            }
        };
        let Some(item) = item else { break };
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(BuildError::Failed {
                    reason: explain_exit(error, spec.memory_bytes),
                    log_tail: tail(&log),
                });
            }
            Err(err) => return Err(BuildError::Docker(err)),
        };
        if let Some(detail) = info.error_detail.and_then(|detail| detail.message) {
            return Err(BuildError::Failed {
                reason: explain_exit(detail, spec.memory_bytes),
                log_tail: tail(&log),
            });
        }
        if let Some(id) = info.aux.and_then(|aux| aux.id) {
            image_id = Some(id);
        }
        let Some(text) = info.stream else { continue };
        // The classic builder wraps a step's stderr in colour codes.
        let text =
            String::from_utf8_lossy(&strip_ansi_escapes::strip(text.as_bytes())).into_owned();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            if line.starts_with("Step ") {
                close_step(&mut steps, step_started);
                steps.push((line.to_string(), Duration::ZERO));
                step_started = Instant::now();
            }
            progress(line);
            log.push(line.to_string());
        }
    }
    close_step(&mut steps, step_started);
    let image_id = match image_id {
        Some(id) => id,
        // Older daemons send no aux id: the tag names what was built.
        None => docker
            .inspect_image(&spec.tag)
            .await
            .map_err(BuildError::Docker)?
            .id
            .unwrap_or_default(),
    };
    Ok(Built {
        image_id,
        log,
        steps,
    })
}

/// CFS period of a build's CPU quota, in microseconds (Docker's default period).
const CPU_PERIOD_MICROS: i32 = 100_000;

/// The build API's memory limit (bytes, at most `i32::MAX`) and CPU period and quota
/// (microseconds), never unlimited.
fn build_limits(spec: &BuildSpec) -> (i32, i32, i32) {
    use crate::workload::runtime::hardening::{DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES};
    let memory_bytes = match spec.memory_bytes {
        0 => DEFAULT_MEMORY_BYTES,
        bytes => bytes,
    };
    let cpu_millis = match spec.cpu_millis {
        0 => DEFAULT_CPU_MILLIS,
        millis => millis,
    };
    let memory = i32::try_from(memory_bytes).unwrap_or(i32::MAX);
    // A quota of `millis` thousandths of the period: 1000 millis is one whole core.
    let quota = cpu_millis.saturating_mul(CPU_PERIOD_MICROS as u64) / 1000;
    let quota = i32::try_from(quota.max(1000)).unwrap_or(i32::MAX);
    (memory, CPU_PERIOD_MICROS, quota)
}

/// A step killed with 137 (SIGKILL) under a memory limit was, as good as always, killed by
/// the kernel for passing it: say so, and what to change.
fn explain_exit(reason: String, memory_bytes: u64) -> String {
    if reason.contains("non-zero code: 137") {
        format!(
            "{reason} (killed: most likely over the build's memory limit of {}; raise `[build] memory` in stratus.toml)",
            proto::manifest::human_bytes(memory_bytes)
        )
    } else {
        reason
    }
}

/// A `FROM $BASE` names no image until the build argument is known.
fn is_stage_arg(image: &str) -> bool {
    image.contains('$')
}

/// Gives the step that is open its duration so far.
fn close_step(steps: &mut [(String, Duration)], started: Instant) {
    if let Some((_, duration)) = steps.last_mut()
        && duration.is_zero()
    {
        *duration = started.elapsed();
    }
}

fn tail(log: &[String]) -> Vec<String> {
    log[log.len().saturating_sub(ERROR_TAIL_LINES)..].to_vec()
}

/// The build context as a tar file: the folder (only its dependency files when the recipe
/// adds the code itself), then the recipe's generated files and Dockerfile under
/// [`GENERATED_DIR`] (after the folder, so they win over any the app has).
async fn write_context(
    source: PathBuf,
    recipe: Recipe,
) -> std::io::Result<tempfile::NamedTempFile> {
    tokio::task::spawn_blocking(move || {
        let file = tempfile::NamedTempFile::new()?;
        let mut tar = tar::Builder::new(file.reopen()?);
        tar.follow_symlinks(false);
        if recipe.code_at.is_some() {
            // A dependency image: its Dockerfile reads the dependency files alone, and
            // sending the whole bundle would only slow the build down.
            for file in &recipe.dependency_files {
                let path = source.join(file);
                if path.is_file() {
                    tar.append_path_with_name(&path, file)?;
                }
            }
        } else {
            tar.append_dir_all(".", &source)?;
        }
        let generated = recipe
            .generated
            .iter()
            .map(|(path, text)| (path.clone(), text.clone()))
            .chain(
                recipe
                    .dockerfile
                    .iter()
                    .map(|text| (format!("{GENERATED_DIR}/Dockerfile"), text.clone())),
            );
        for (path, text) in generated {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, &path, text.as_bytes())?;
        }
        tar.into_inner()?.sync_all()?;
        Ok(file)
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cpu_millis: u64, memory_bytes: u64) -> BuildSpec {
        BuildSpec {
            tag: "stratus-app/web:1".into(),
            args: HashMap::new(),
            target: None,
            cpu_millis,
            memory_bytes,
            timeout: Duration::from_secs(60),
            labels: HashMap::new(),
        }
    }

    #[test]
    fn a_build_is_always_limited_in_cpu_and_memory() {
        assert_eq!(
            build_limits(&spec(1_500, 1 << 30)),
            (1 << 30, 100_000, 150_000)
        );
        assert_eq!(
            build_limits(&spec(0, 0)),
            (128 << 20, 100_000, 25_000),
            "the defaults, never unlimited"
        );
        assert_eq!(build_limits(&spec(1, 8 << 30)).0, i32::MAX);
        assert_eq!(
            build_limits(&spec(1, 1 << 30)).2,
            1_000,
            "the kernel's least quota"
        );
    }
}
