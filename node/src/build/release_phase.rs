//! Heroku's release phase: the release command runs once, in a one-off container of the
//! new image with the app's environment, before anything is rolled out. A non-zero exit
//! (or one past the time limit) fails the release with its output, and the previous
//! release keeps serving.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;

use super::one_off::{self, OneOff, OneOffError};

/// What the release command runs with.
pub struct ReleaseRun<'a> {
    pub app: &'a str,
    pub release: u64,
    pub image: &'a str,
    pub command: &'a str,
    /// The app's environment, `PORT` included.
    pub env: Vec<String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the release command `{command}` exited with {code}: the release is not rolled out")]
    Exited { command: String, code: i64 },
    #[error("the release command `{command}` ran longer than {limit:?} and was stopped")]
    TimedOut { command: String, limit: Duration },
    #[error("the release command is refused: {0}")]
    Refused(String),
    #[error("cannot run the release command in Docker: {0}")]
    Docker(#[source] bollard::errors::Error),
}

/// Runs the command, handing each line of its output to `output`.
pub async fn run(
    docker: &Docker,
    run: &ReleaseRun<'_>,
    mut output: impl FnMut(&str) + Send,
) -> Result<(), ReleaseError> {
    let one_off = OneOff {
        name: format!(
            "stratus-release-{}-{}-{:08x}",
            run.app,
            run.release,
            rand::random::<u32>()
        ),
        image: run.image,
        command: run.command,
        env: run.env.clone(),
        working_dir: None,
        binds: Vec::new(),
        labels: HashMap::from([
            ("stratus.app".to_string(), run.app.to_string()),
            ("stratus.release-phase".to_string(), run.release.to_string()),
        ]),
        cpu_millis: run.cpu_millis,
        memory_bytes: run.memory_bytes,
        timeout: run.timeout,
    };
    let (container, outcome) = one_off::run(docker, &one_off, &mut output).await;
    if let Some(container) = container {
        container.remove().await;
    }
    outcome.map_err(|err| match err {
        OneOffError::Exited { command, code } => ReleaseError::Exited { command, code },
        OneOffError::TimedOut { command, limit } => ReleaseError::TimedOut { command, limit },
        OneOffError::Docker { source, .. } => ReleaseError::Docker(source),
        OneOffError::Refused { reason, .. } => ReleaseError::Refused(reason),
    })
}
