//! A one-off container: created from an image with a shell command, its output handed on
//! line by line, stopped at its time limit, and judged by its exit code. The release phase
//! runs the release command this way; the python and node builders install dependencies
//! this way, with the node's download cache mounted, and commit the container.
//!
//! It runs app code, so it gets the replicas' hardened defaults
//! ([`crate::workload::runtime::hardening`]): no new privileges, a few capabilities, a pids
//! limit, CPU and memory limits always, and never the Docker socket.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;

use crate::workload::runtime::hardening::{self, Limits};

/// What runs, and how.
pub struct OneOff<'a> {
    /// The container's name, unique on the daemon.
    pub name: String,
    pub image: &'a str,
    /// Run by `sh -c`.
    pub command: &'a str,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `host-path:container-path[:ro]`.
    pub binds: Vec<String>,
    pub labels: HashMap<String, String>,
    /// Thousandths of a core; 0: the default limit.
    pub cpu_millis: u64,
    /// 0: the default limit.
    pub memory_bytes: u64,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OneOffError {
    #[error("`{command}` exited with {code}{}", if *.code == 137 {
        " (killed: most likely over its memory limit; raise `[build] memory`, or `[resources] memory` for a release command)"
    } else { "" })]
    Exited { command: String, code: i64 },
    #[error("`{command}` ran longer than {limit:?} and was stopped")]
    TimedOut { command: String, limit: Duration },
    #[error("refusing to run `{command}`: {reason}")]
    Refused { command: String, reason: String },
    #[error("cannot run `{command}` in Docker: {source}")]
    Docker {
        command: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// A created container; its owner removes it with [`Container::remove`].
pub struct Container<'a> {
    docker: &'a Docker,
    pub name: String,
}

impl Container<'_> {
    pub async fn remove(self) {
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = self.docker.remove_container(&self.name, Some(remove)).await;
    }
}

/// Creates and runs the container, handing each line of its output to `output`. The
/// container is returned stopped (to commit or remove) whatever the outcome; on an error
/// the caller removes it.
pub async fn run<'a>(
    docker: &'a Docker,
    run: &OneOff<'_>,
    output: &mut (impl FnMut(&str) + Send),
) -> (Option<Container<'a>>, Result<(), OneOffError>) {
    let docker_error = |source| OneOffError::Docker {
        command: run.command.to_string(),
        source,
    };
    if let Err(reason) = hardening::check_binds(&run.binds) {
        return (
            None,
            Err(OneOffError::Refused {
                command: run.command.to_string(),
                reason,
            }),
        );
    }
    let body = create_body(run);
    let options = CreateContainerOptionsBuilder::default()
        .name(&run.name)
        .build();
    if let Err(err) = docker.create_container(Some(options), body).await {
        return (None, Err(docker_error(err)));
    }
    let container = Container {
        docker,
        name: run.name.clone(),
    };
    let outcome = run_created(docker, run, output).await;
    if matches!(outcome, Err(OneOffError::TimedOut { .. })) {
        let _ = docker
            .kill_container(
                &run.name,
                None::<bollard::query_parameters::KillContainerOptions>,
            )
            .await;
    }
    (Some(container), outcome)
}

/// The container's create request, hardened. Pure.
fn create_body(run: &OneOff<'_>) -> ContainerCreateBody {
    let mut host_config = hardening::host_config(Limits {
        cpu_millis: run.cpu_millis,
        memory_bytes: run.memory_bytes,
        pids: hardening::BUILD_PIDS_LIMIT,
    });
    host_config.binds = Some(run.binds.clone()).filter(|binds| !binds.is_empty());
    ContainerCreateBody {
        image: Some(run.image.to_string()),
        cmd: Some(vec!["sh".into(), "-c".into(), run.command.to_string()]),
        entrypoint: Some(Vec::new()),
        env: Some(run.env.clone()),
        working_dir: run.working_dir.clone(),
        labels: Some(run.labels.clone()),
        host_config: Some(host_config),
        ..Default::default()
    }
}

async fn run_created(
    docker: &Docker,
    run: &OneOff<'_>,
    output: &mut (impl FnMut(&str) + Send),
) -> Result<(), OneOffError> {
    let docker_error = |source| OneOffError::Docker {
        command: run.command.to_string(),
        source,
    };
    docker
        .start_container(&run.name, None::<StartContainerOptions>)
        .await
        .map_err(docker_error)?;
    let logs = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut lines = docker.logs(&run.name, Some(logs));
    let followed = tokio::time::timeout(run.timeout, async {
        while let Some(Ok(chunk)) = lines.next().await {
            for line in String::from_utf8_lossy(&chunk.into_bytes()).lines() {
                output(line);
            }
        }
    })
    .await;
    if followed.is_err() {
        return Err(OneOffError::TimedOut {
            command: run.command.to_string(),
            limit: run.timeout,
        });
    }
    let code = match docker
        .wait_container(&run.name, None::<WaitContainerOptions>)
        .next()
        .await
    {
        Some(Ok(done)) => done.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        Some(Err(err)) => return Err(docker_error(err)),
        None => 0,
    };
    if code != 0 {
        return Err(OneOffError::Exited {
            command: run.command.to_string(),
            code,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_off_container_is_hardened_and_always_limited() {
        let run = OneOff {
            name: "stratus-install-1".into(),
            image: "stratus/python:3.11",
            command: "pip install -r requirements.txt",
            env: vec!["PATH=/usr/bin".into()],
            working_dir: Some("/app".into()),
            binds: vec!["/var/lib/stratus/cache/pip:/cache".into()],
            labels: HashMap::new(),
            cpu_millis: 0,
            memory_bytes: 512 << 20,
            timeout: Duration::from_secs(60),
        };
        let body = create_body(&run);
        let host = body.host_config.unwrap();
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".into()]));
        assert_eq!(host.cap_drop, Some(vec!["ALL".into()]));
        assert_eq!(host.pids_limit, Some(hardening::BUILD_PIDS_LIMIT));
        assert_eq!(host.memory, Some(512 << 20));
        assert_eq!(host.nano_cpus, Some(250_000_000), "a default CPU limit");
        assert_eq!(host.binds, Some(run.binds.clone()));
    }

    #[tokio::test]
    async fn a_one_off_never_gets_the_docker_socket() {
        // Refused before the daemon is asked anything: this client has no daemon.
        let docker =
            Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                .expect("a client needs no connection");
        let run = OneOff {
            name: "stratus-release-x".into(),
            image: "stratus/busybox:latest",
            command: "true",
            env: Vec::new(),
            working_dir: None,
            binds: vec!["/var/run/docker.sock:/var/run/docker.sock".into()],
            labels: HashMap::new(),
            cpu_millis: 100,
            memory_bytes: 0,
            timeout: Duration::from_secs(5),
        };
        let (container, outcome) = super::run(&docker, &run, &mut |_| {}).await;
        assert!(container.is_none());
        assert!(
            matches!(outcome, Err(OneOffError::Refused { .. })),
            "{outcome:?}"
        );
    }
}
