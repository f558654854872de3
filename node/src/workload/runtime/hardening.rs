//! The hardened defaults every container Stratus creates gets, replicas and one-off build
//! containers alike: pure, so the mapping is tested without a daemon.
//!
//! - `no-new-privileges`: a setuid binary, or file capabilities, never raise what a process
//!   in the container may do.
//! - Capabilities: all dropped, then only [`CAPABILITIES`] added back.
//! - A pids limit ([`REPLICA_PIDS_LIMIT`], [`BUILD_PIDS_LIMIT`]): a fork bomb stops at it
//!   instead of exhausting the host's process table.
//! - CPU and memory limits, always: the ones asked, or [`DEFAULT_CPU_MILLIS`] and
//!   [`DEFAULT_MEMORY_BYTES`] when 0. Swap is limited to the memory limit (no swap beyond
//!   it, where the kernel accounts swap).
//! - Never privileged, a private IPC namespace, Docker's default seccomp profile (never
//!   `unconfined`), and no bind mount of a Docker socket ([`check_binds`]).

use std::path::Path;

use bollard::models::HostConfig;

/// Added back after dropping all. Docker's default set, minus what typical apps never need:
///
/// - `CHOWN`, `DAC_OVERRIDE`, `FOWNER`: a process running as root in the container may own
///   and write the files of its image's other users (images install as root and run a
///   server that writes caches, sockets or pid files under directories it does not own;
///   entrypoints `chown` their data folders);
/// - `SETUID`, `SETGID`: entrypoints that start as root and step down to an app user
///   (`su-exec`, `gosu`, nginx and postgres workers);
/// - `NET_BIND_SERVICE`: listening below port 1024 (an image with nginx on 80);
/// - `KILL`: signalling processes of other users in the container (a supervisor running
///   workers under another uid, Docker's init forwarding SIGTERM).
///
/// Dropped from Docker's default: `NET_RAW` (raw and packet sockets: ARP and IP spoofing
/// toward the neighbours on the bridge, the first tool against another tenant), `MKNOD`
/// (device nodes), `SETFCAP` and `SETPCAP` (giving capabilities to files and processes),
/// `SYS_CHROOT`, `AUDIT_WRITE` and `FSETID` (keeping setuid bits on files it writes).
pub const CAPABILITIES: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETUID",
    "SETGID",
    "NET_BIND_SERVICE",
    "KILL",
];

/// Processes (threads included) a replica may have at once: far beyond a web app's
/// workers and threads, far below what would starve the host.
pub const REPLICA_PIDS_LIMIT: i64 = 512;

/// Processes a one-off container (dependency install, release command) may have: package
/// managers spawn many short-lived compilers and scripts.
pub const BUILD_PIDS_LIMIT: i64 = 1024;

/// CPU limit of a container whose spec asks none (0): a quarter of a core, the manifest's
/// default.
pub const DEFAULT_CPU_MILLIS: u64 = proto::manifest::DEFAULT_RESOURCES.cpu_millis;

/// Memory limit of a container whose spec asks none (0): the manifest's default.
pub const DEFAULT_MEMORY_BYTES: u64 = proto::manifest::DEFAULT_RESOURCES.memory_bytes;

/// What a container is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Thousandths of a core; 0: [`DEFAULT_CPU_MILLIS`].
    pub cpu_millis: u64,
    /// Bytes; 0: [`DEFAULT_MEMORY_BYTES`].
    pub memory_bytes: u64,
    pub pids: i64,
}

/// A `HostConfig` with the hardened defaults and `limits`; the caller adds mounts, ports,
/// network and runtime.
pub fn host_config(limits: Limits) -> HostConfig {
    let cpu_millis = match limits.cpu_millis {
        0 => DEFAULT_CPU_MILLIS,
        millis => millis,
    };
    let memory_bytes = match limits.memory_bytes {
        0 => DEFAULT_MEMORY_BYTES,
        bytes => bytes,
    };
    // Docker's own ceiling for either is far below i64::MAX; a larger ask is that ceiling.
    let nano_cpus = i64::try_from(cpu_millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    let memory = i64::try_from(memory_bytes).unwrap_or(i64::MAX);
    HostConfig {
        init: Some(true),
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: Some(CAPABILITIES.iter().map(|cap| cap.to_string()).collect()),
        pids_limit: Some(limits.pids),
        nano_cpus: Some(nano_cpus),
        memory: Some(memory),
        memory_swap: Some(memory),
        ipc_mode: Some("private".to_string()),
        ..Default::default()
    }
}

/// Refuses a bind mount of a Docker socket (by its usual names, or any `docker.sock`): a
/// container holding the socket is root on the host and sees every tenant.
pub fn check_binds(binds: &[String]) -> Result<(), String> {
    for bind in binds {
        let source = bind.split(':').next().unwrap_or(bind);
        if is_docker_socket(Path::new(source)) {
            return Err(format!(
                "refusing to mount {source} into a container: the Docker socket gives root on the host"
            ));
        }
    }
    Ok(())
}

fn is_docker_socket(path: &Path) -> bool {
    let named = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.ends_with("docker.sock") || name == "containerd.sock");
    named || path.starts_with("/var/run/docker") || path.starts_with("/run/docker")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_drops_all_capabilities_but_a_few_and_may_not_gain_any() {
        let host = host_config(Limits {
            cpu_millis: 500,
            memory_bytes: 64 << 20,
            pids: REPLICA_PIDS_LIMIT,
        });
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".into()]));
        assert_eq!(host.cap_drop, Some(vec!["ALL".into()]));
        let added = host.cap_add.unwrap();
        assert!(added.len() <= 7, "{added:?}");
        for dangerous in ["NET_RAW", "SYS_ADMIN", "NET_ADMIN", "MKNOD", "SYS_PTRACE"] {
            assert!(!added.iter().any(|cap| cap == dangerous), "{dangerous}");
        }
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.pids_limit, Some(512));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20), "no swap beyond the limit");
        assert_eq!(host.init, Some(true));
    }

    #[test]
    fn a_container_asking_no_limits_gets_the_defaults() {
        let host = host_config(Limits {
            cpu_millis: 0,
            memory_bytes: 0,
            pids: BUILD_PIDS_LIMIT,
        });
        assert_eq!(host.nano_cpus, Some(250_000_000));
        assert_eq!(host.memory, Some(128 << 20));
        assert_eq!(host.pids_limit, Some(1024));
        let huge = host_config(Limits {
            cpu_millis: u64::MAX,
            memory_bytes: u64::MAX,
            pids: 1,
        });
        assert_eq!(
            (huge.nano_cpus, huge.memory),
            (Some(i64::MAX), Some(i64::MAX))
        );
    }

    #[test]
    fn the_docker_socket_is_never_mounted() {
        assert!(check_binds(&["/srv/bundles/web/1:/app:ro".into()]).is_ok());
        assert!(check_binds(&[]).is_ok());
        for socket in [
            "/var/run/docker.sock:/var/run/docker.sock",
            "/run/docker.sock:/s",
            "/tmp/stratus-sbx/3/docker.sock:/d.sock:ro",
            "/var/run/docker:/x",
            "/run/containerd/containerd.sock:/c",
        ] {
            let refused = check_binds(&["/data:/data".into(), socket.into()]);
            assert!(refused.is_err(), "{socket}");
        }
    }
}
