//! Heroku's release phase: the release command runs once, in a one-off container of the
//! new image with the app's environment, before anything is rolled out. A non-zero exit
//! (or one past the time limit) fails the release with its output, and the previous
//! release keeps serving.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;

/// What the release command runs with.
pub struct ReleaseRun<'a> {
    pub app: &'a str,
    pub release: u64,
    pub image: &'a str,
    pub command: &'a str,
    /// The app's environment, `PORT` included.
    pub env: Vec<String>,
    pub memory_bytes: u64,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the release command `{command}` exited with {code}: the release is not rolled out")]
    Exited { command: String, code: i64 },
    #[error("the release command `{command}` ran longer than {limit:?} and was stopped")]
    TimedOut { command: String, limit: Duration },
    #[error("cannot run the release command in Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
}

/// Runs the command, handing each line of its output to `output`.
pub async fn run(
    docker: &Docker,
    run: &ReleaseRun<'_>,
    mut output: impl FnMut(&str) + Send,
) -> Result<(), ReleaseError> {
    let name = format!(
        "stratus-release-{}-{}-{:08x}",
        run.app,
        run.release,
        rand::random::<u32>()
    );
    let body = ContainerCreateBody {
        image: Some(run.image.to_string()),
        cmd: Some(vec!["sh".into(), "-c".into(), run.command.to_string()]),
        entrypoint: Some(Vec::new()),
        env: Some(run.env.clone()),
        labels: Some(HashMap::from([
            ("stratus.app".to_string(), run.app.to_string()),
            ("stratus.release-phase".to_string(), run.release.to_string()),
        ])),
        host_config: Some(HostConfig {
            init: Some(true),
            memory: i64::try_from(run.memory_bytes)
                .ok()
                .filter(|bytes| *bytes > 0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    docker.create_container(Some(options), body).await?;
    let outcome = run_created(docker, &name, run, &mut output).await;
    let remove = RemoveContainerOptionsBuilder::default().force(true).build();
    let _ = docker.remove_container(&name, Some(remove)).await;
    outcome
}

async fn run_created(
    docker: &Docker,
    name: &str,
    run: &ReleaseRun<'_>,
    output: &mut (impl FnMut(&str) + Send),
) -> Result<(), ReleaseError> {
    docker
        .start_container(name, None::<StartContainerOptions>)
        .await?;
    let logs = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut lines = docker.logs(name, Some(logs));
    let followed = tokio::time::timeout(run.timeout, async {
        while let Some(Ok(chunk)) = lines.next().await {
            for line in String::from_utf8_lossy(&chunk.into_bytes()).lines() {
                output(line);
            }
        }
    })
    .await;
    if followed.is_err() {
        return Err(ReleaseError::TimedOut {
            command: run.command.to_string(),
            limit: run.timeout,
        });
    }
    let code = match docker
        .wait_container(name, None::<WaitContainerOptions>)
        .next()
        .await
    {
        Some(Ok(done)) => done.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        Some(Err(err)) => return Err(err.into()),
        None => 0,
    };
    if code != 0 {
        return Err(ReleaseError::Exited {
            command: run.command.to_string(),
            code,
        });
    }
    Ok(())
}
