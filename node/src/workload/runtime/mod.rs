//! Container runtimes: how a node starts, stops, lists and reads the logs of the replicas
//! placed on it.
//!
//! [`RuntimeDriver`] is the one extension point; [`docker::DockerDriver`] (the default,
//! through the Docker Engine API with `bollard`) and [`process::ProcessDriver`] (plain
//! processes, for hosts without Docker) implement it. Drivers are thin I/O: what to run
//! comes from the reconciler as a [`ContainerSpec`], and what runs goes back as
//! [`RunningContainer`]s. Host ports come from the pure [`ports::PortAllocator`].
//!
//! Neither driver pulls images or restarts what exits: a node runs only images built on
//! it (`scripts/build-images.sh`), and restarting is the reconciler's decision.

pub mod docker;
pub mod ports;
pub mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use proto::ContainerState;
use sha2::{Digest, Sha256};

pub use docker::{DockerDriver, DockerOptions};
pub use ports::{PortAllocator, PortRange};
pub use process::{ProcessDriver, ProcessOptions};

/// Labels (Docker) naming what a container is; `list` reads them back to adopt containers
/// after an agent restart.
pub mod labels {
    pub const APP: &str = "stratus.app";
    pub const RELEASE: &str = "stratus.release";
    pub const REPLICA: &str = "stratus.replica";
    pub const NODE: &str = "stratus.node";
    pub const PLACEMENT: &str = "stratus.placement";
    pub const CLUSTER: &str = "stratus.cluster";
    /// The port the app listens on inside the container; needed to rebuild its address.
    pub const PORT: &str = "stratus.port";
}

/// One replica to run: everything a driver needs, nothing it must look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Unique id of this placement. Starting the same placement twice must not start a
    /// second copy: drivers derive the container's name from it.
    pub placement_id: String,
    pub app: String,
    pub release: u64,
    pub replica: u32,
    pub node_id: String,
    /// The unpacked app folder: mounted read-only at `/app` (docker) or the working
    /// directory (process).
    pub bundle_dir: PathBuf,
    /// Docker image, which must already exist on this node (ignored by the process driver).
    pub image: String,
    /// Run with `sh -c`.
    pub cmd: String,
    /// The app listens on `$PORT`, which is this port inside a container. The process
    /// driver has no port mapping, so there `$PORT` is the allocated host port instead.
    pub port: u16,
    pub env: BTreeMap<String, String>,
    /// CPU limit in thousandths of a core; 0 means unlimited.
    pub cpu_millis: u64,
    /// Memory limit in bytes; 0 means unlimited.
    pub memory_bytes: u64,
}

/// A container (or process) a driver manages, as the driver sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    /// The driver's id: pass it to [`RuntimeDriver::stop`] and [`RuntimeDriver::logs`].
    pub id: String,
    pub placement_id: String,
    pub app: String,
    pub release: u64,
    pub replica: u32,
    /// Where the app answers. For an exited container on a Docker network the IP is no
    /// longer known and is unspecified (`0.0.0.0`).
    pub addr: SocketAddr,
    pub state: ContainerState,
    /// Set once the container has exited.
    pub exit_code: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {image} not found on this node: build it with scripts/build-images.sh")]
    ImageNotFound { image: String },
    #[error(
        "cannot reach the docker daemon: {source}: start docker, check DOCKER_HOST, \
         or run the agent with the process runtime"
    )]
    DockerUnavailable {
        #[source]
        source: bollard::errors::Error,
    },
    #[error("docker could not {action}: {source}")]
    Docker {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("no free host port in {range} on {ip}: stop some containers or widen the port range")]
    NoFreePort {
        range: PortRange,
        ip: std::net::IpAddr,
    },
    #[error("no container {id} on this node: list containers to find its id")]
    NotFound { id: String },
    #[error("container {name} belongs to placement {found:?}, not {wanted:?}: remove it by hand")]
    NameClash {
        name: String,
        found: String,
        wanted: String,
    },
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs replicas on this host.
///
/// Required: every method. There are no defaults because none is safe: a driver that
/// silently did nothing would make the reconciler believe replicas run.
///
/// Every method may be called concurrently from several tasks; a driver serialises what
/// must be serialised (port allocation, start of one placement) itself.
#[async_trait]
pub trait RuntimeDriver: Send + Sync + 'static {
    /// A short name for logs and `GET /v1/health`: `"docker"`, `"process"`.
    fn name(&self) -> &'static str;

    /// The driver id the container of `placement_id` has (or will have) on this node.
    fn id_for(&self, placement_id: &str) -> String;

    /// Starts `spec` and returns it once the runtime reports it started (not once the app
    /// answers: that is the health check's job).
    ///
    /// Must be idempotent by `placement_id`: if the placement already runs, return it
    /// unchanged (same id, same address) without starting a second copy; if it exists but
    /// has exited, remove it and start it afresh. A missing image is
    /// [`RuntimeError::ImageNotFound`]; the driver never pulls.
    async fn start(&self, spec: &ContainerSpec) -> Result<RunningContainer, RuntimeError>;

    /// Asks the container to stop (SIGTERM), kills it after `grace`, then removes it and
    /// frees its port. Returns once it is gone. Stopping an unknown or already removed id
    /// is `Ok`, so a retried stop never fails. A driver may cap `grace` (Docker caps it at
    /// [`docker::MAX_GRACE`]).
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Every container this driver manages on this host, running or exited, so an agent
    /// that restarts can adopt what its predecessor started. Containers of other tools are
    /// never listed.
    async fn list(&self) -> Result<Vec<RunningContainer>, RuntimeError>;

    /// The last `tail` lines of the container's stdout and stderr, interleaved as written,
    /// oldest first.
    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>, RuntimeError>;

    /// The last `tail` lines, then every new line as it is written, until the container
    /// is removed or the stream is dropped.
    async fn follow_logs(&self, id: &str, tail: usize) -> Result<LogStream, RuntimeError>;
}

/// Lines of a container's output, as they come.
pub type LogStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

/// Splits a byte stream into lines, keeping a partial last line for the next chunk.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(
                String::from_utf8_lossy(&line[..line.len() - 1])
                    .trim_end_matches('\r')
                    .to_string(),
            );
        }
        lines
    }
}

/// The container (or process) name for a placement: `stratus-` and the placement id.
///
/// Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; any other character becomes `-` and a
/// hash of the exact id is appended, so two ids that differ only there still get two
/// names. The result is also safe as a file name (no `/`, never `.` or `..`).
pub fn container_name(placement_id: &str) -> String {
    let sanitized: String = placement_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if sanitized == placement_id && !placement_id.is_empty() {
        return format!("stratus-{placement_id}");
    }
    let digest = Sha256::digest(placement_id.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("stratus-{sanitized}-{hash}")
}

/// The last `tail` lines of `bytes`, lossily decoded.
pub(crate) fn last_lines(bytes: &[u8], tail: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(tail);
    lines[skip..].iter().map(|line| line.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_stable_safe_and_distinct() {
        assert_eq!(container_name("web-3-1"), "stratus-web-3-1");
        assert_eq!(container_name("web-3-1"), container_name("web-3-1"));
        let slash = container_name("web/3");
        let colon = container_name("web:3");
        assert!(slash.starts_with("stratus-web-3-"), "{slash}");
        assert_ne!(slash, colon, "different ids must not share a name");
        assert!(!container_name("../x").contains('/'));
        assert_ne!(container_name(""), "stratus-");
    }

    #[test]
    fn line_splitter_keeps_partial_lines_for_the_next_chunk() {
        let mut splitter = LineSplitter::default();
        assert_eq!(splitter.push(b"a\nb"), ["a"]);
        assert_eq!(splitter.push(b"c\r\nd\n"), ["bc", "d"]);
        assert!(splitter.push(b"").is_empty());
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(last_lines(b"a\nb", 5), ["a", "b"]);
        assert!(last_lines(b"", 5).is_empty());
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let err = RuntimeError::ImageNotFound {
            image: "stratus/busybox:latest".into(),
        };
        assert_eq!(
            err.to_string(),
            "image stratus/busybox:latest not found on this node: build it with \
             scripts/build-images.sh"
        );
    }
}
