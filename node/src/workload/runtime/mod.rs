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
//! it (`scripts/build-images.sh`), and restarting, with backoff, is the supervisor's job
//! ([`crate::workload::supervisor`]).

pub mod docker;
pub mod hardening;
pub mod ports;
pub mod process;
pub mod tenant_network;

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
    /// The tenant whose app it is (absent for the cluster administrator's apps).
    pub const TENANT: &str = super::tenant_network::TENANT_LABEL;
    /// The Docker network the container joined, where it is not the node's default.
    pub const NETWORK: &str = "stratus.network";
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
    /// The image was built from the bundle: it holds the code and its start command. No
    /// folder is mounted, the image's own command and working directory are used (unless
    /// `cmd` is set), and the filesystem is the image's, writable.
    pub built: bool,
    /// Mount the root filesystem read-only, with a writable `/tmp`.
    pub read_only_root: bool,
    /// Run as this user (`uid[:gid]` or a name the image has) instead of the image's;
    /// ignored by the process driver.
    pub user: Option<String>,
    /// The app listens on `$PORT`, which is this port inside a container. The process
    /// driver has no port mapping, so there `$PORT` is the allocated host port instead.
    pub port: u16,
    pub env: BTreeMap<String, String>,
    /// CPU limit in thousandths of a core; 0: the default limit
    /// ([`hardening::DEFAULT_CPU_MILLIS`]; unlimited for the process driver).
    pub cpu_millis: u64,
    /// Memory limit in bytes; 0: the default limit ([`hardening::DEFAULT_MEMORY_BYTES`];
    /// unlimited for the process driver).
    pub memory_bytes: u64,
    /// The app's tenant (`None`: the cluster administrator's app).
    pub tenant: Option<String>,
    /// How the tenant's replicas must run.
    pub isolation: proto::tenancy::Isolation,
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
    #[error("refusing to start {placement}: {reason}")]
    Refused { placement: String, reason: String },
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

    /// Whether this driver can run a gVisor tenant's replicas (Docker with `runsc`). A
    /// driver that cannot must refuse them, never run them without gVisor.
    fn has_gvisor(&self) -> bool;

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

    /// What the container uses now (`stratus ps`). A reading takes two samples a moment
    /// apart, so it takes about a second; figures the runtime cannot give are `None`.
    async fn usage(&self, id: &str) -> Result<ResourceUsage, RuntimeError>;
}

/// One reading of what a container uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    /// Thousandths of a core, averaged over the sampling interval.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// `None`: no limit.
    pub memory_limit_bytes: Option<u64>,
}

/// Lines of a container's output, as they come.
pub type LogStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

/// Longest line of app output kept whole. An app that writes megabytes without a newline
/// must not make the node buffer them, nor every log reader after it: a longer line is cut
/// here, marked with [`CUT_MARKER`], and the rest of it up to its newline is dropped.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Ends a line that was cut at [`MAX_LINE_BYTES`], so a reader knows it lost the rest.
pub const CUT_MARKER: &str = " [stratus: line cut at 16 KiB]";

/// Splits a byte stream into lines of at most [`MAX_LINE_BYTES`], keeping a partial last
/// line for the next chunk.
///
/// Not `tokio_util`'s `LinesCodec`: that one refuses output that is not UTF-8, and app
/// output is decoded lossily instead. The length rule is the same as
/// `LinesCodec::new_with_max_length`'s, except that the cut line is kept, marked.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
    /// Inside a line already cut: drop bytes up to its newline.
    discarding: bool,
}

impl LineSplitter {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let newline = rest.iter().position(|b| *b == b'\n');
            if self.discarding {
                let Some(end) = newline else {
                    break;
                };
                self.discarding = false;
                rest = &rest[end + 1..];
                continue;
            }
            let room = MAX_LINE_BYTES - self.partial.len();
            match newline {
                Some(end) if end <= room => {
                    self.partial.extend_from_slice(&rest[..end]);
                    lines.push(whole_line(&std::mem::take(&mut self.partial)));
                    rest = &rest[end + 1..];
                }
                None if rest.len() <= room => {
                    self.partial.extend_from_slice(rest);
                    break;
                }
                _ => {
                    self.partial.extend_from_slice(&rest[..room]);
                    lines.push(cut_line(&std::mem::take(&mut self.partial)));
                    self.discarding = true;
                    rest = &rest[room..];
                }
            }
        }
        lines
    }

    /// The last line if the stream ended without a newline after it.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let partial = std::mem::take(&mut self.partial);
        let discarding = std::mem::take(&mut self.discarding);
        (!partial.is_empty() && !discarding).then(|| whole_line(&partial))
    }
}

fn whole_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes.strip_suffix(b"\r").unwrap_or(bytes)).into_owned()
}

/// A line cut at the limit: a character split by the cut is dropped, not shown as U+FFFD.
fn cut_line(bytes: &[u8]) -> String {
    let whole = match std::str::from_utf8(bytes) {
        Err(err) if err.error_len().is_none() => &bytes[..err.valid_up_to()],
        _ => bytes,
    };
    let mut line = String::from_utf8_lossy(whole).into_owned();
    line.push_str(CUT_MARKER);
    line
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
    format!("stratus-{sanitized}-{}", hex::encode(&digest[..4]))
}

/// The last `tail` lines of `bytes`, lossily decoded, each cut at [`MAX_LINE_BYTES`].
pub(crate) fn last_lines(bytes: &[u8], tail: usize) -> Vec<String> {
    let mut splitter = LineSplitter::default();
    let mut lines = splitter.push(bytes);
    lines.extend(splitter.finish());
    let skip = lines.len().saturating_sub(tail);
    lines.split_off(skip)
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
    fn line_splitter_cuts_long_lines_and_drops_their_rest() {
        let mut splitter = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE_BYTES * 3];
        // A long line split over several chunks, none with a newline, is cut once.
        assert!(splitter.push(&long[..100]).is_empty());
        let cut = splitter.push(&long[100..]);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].len(), MAX_LINE_BYTES + CUT_MARKER.len());
        assert!(cut[0].ends_with(CUT_MARKER));
        // The rest of that line is dropped; the next line comes through whole.
        assert_eq!(splitter.push(b"xxxx\nnext\n"), ["next"]);
        // A line of exactly the limit is not cut.
        let exact = [vec![b'y'; MAX_LINE_BYTES], b"\n".to_vec()].concat();
        assert_eq!(splitter.push(&exact), ["y".repeat(MAX_LINE_BYTES)]);
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn a_cut_never_leaves_half_a_character() {
        let mut text = vec![b'a'; MAX_LINE_BYTES - 1];
        text.extend("é\n".as_bytes()); // two bytes, the second one past the limit
        let lines = LineSplitter::default().push(&text);
        assert_eq!(
            lines[0],
            format!("{}{CUT_MARKER}", "a".repeat(MAX_LINE_BYTES - 1))
        );
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(last_lines(b"a\nb", 5), ["a", "b"]);
        assert_eq!(last_lines(b"a\r\n\nb\n", 5), ["a", "", "b"]);
        assert!(last_lines(b"", 5).is_empty());
        let huge = [vec![b'z'; 10 * MAX_LINE_BYTES], b"\nend".to_vec()].concat();
        let tail = last_lines(&huge, 5);
        assert_eq!(tail.len(), 2);
        assert!(tail[0].ends_with(CUT_MARKER) && tail[0].len() < 2 * MAX_LINE_BYTES);
        assert_eq!(tail[1], "end");
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
